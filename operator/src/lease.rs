//! Leader election on a `coordination.k8s.io` Lease: the write path (status, Events, gateway
//! Deployments) runs only on the replica that holds it.
//!
//! The holder renews every `duration / 3`; the others look at most every 2 s. Another replica
//! takes over when the Lease is released (a clean stop) or when the record has not changed for a
//! whole `duration` *as measured on its own clock* since it last saw it change (as client-go
//! does), so clock skew between nodes does not matter. Every write carries the
//! resourceVersion it read, so two replicas racing for an expired Lease cannot both win. A
//! holder that cannot renew for `duration` stops acting as leader on its own.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::metrics::Metrics;

/// Which Lease, and who we are.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (its pod name, or host name and pid).
    pub identity: String,
    /// How long a Lease stays valid without renewal.
    pub duration: Duration,
}

/// What we last saw of the Lease record, and when.
struct Observed {
    record: (Option<String>, Option<MicroTime>),
    at: Instant,
}

/// Runs the election forever, publishing `true` on `leader` while this replica holds the Lease.
pub async fn run(
    client: kube::Client,
    config: LeaseConfig,
    leader: watch::Sender<bool>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let mut observed: Option<Observed> = None;
    let mut last_renewal: Option<Instant> = None;
    let renew_every = config.duration / 3;
    loop {
        let held = match try_acquire(&api, &config, &mut observed).await {
            Ok(held) => {
                if held {
                    last_renewal = Some(Instant::now());
                }
                held
            }
            Err(e) => {
                tracing::warn!(lease = %config.name, error = %e, "lease update failed");
                // Keep leading only while the last renewal is still valid.
                last_renewal.is_some_and(|t| t.elapsed() < config.duration) && *leader.borrow()
            }
        };
        leader.send_if_modified(|cur| {
            if *cur == held {
                return false;
            }
            if held {
                tracing::info!(identity = %config.identity, lease = %config.name, "became the leader");
            } else {
                tracing::info!(identity = %config.identity, lease = %config.name, "lost the leadership");
            }
            *cur = held;
            true
        });
        metrics.leader.set(i64::from(held));
        // Followers look more often (at most every 2 s, like client-go's retry period), so a
        // released or expired Lease is taken over quickly even when the Lease is long.
        let wait = if held {
            renew_every
        } else {
            renew_every.min(Duration::from_secs(2))
        };
        tokio::time::sleep(wait).await;
    }
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

/// One round: create, renew or take over the Lease. `Ok(true)` when we hold it afterwards.
async fn try_acquire(
    api: &Api<Lease>,
    config: &LeaseConfig,
    observed: &mut Option<Observed>,
) -> Result<bool, kube::Error> {
    let seconds = i32::try_from(config.duration.as_secs().max(1)).unwrap_or(15);
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.name.clone()),
                namespace: Some(config.namespace.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(config.identity.clone()),
                lease_duration_seconds: Some(seconds),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let record = (spec.holder_identity.clone(), spec.renew_time.clone());
    let changed = observed.as_ref().is_none_or(|o| o.record != record);
    if changed {
        *observed = Some(Observed {
            record,
            at: Instant::now(),
        });
    }
    let ours = spec.holder_identity.as_deref() == Some(config.identity.as_str());
    let holder_duration = spec.lease_duration_seconds.map_or(config.duration, |s| {
        Duration::from_secs(u64::try_from(s).unwrap_or(15))
    });
    let expired = spec.holder_identity.as_deref().is_none_or(str::is_empty)
        || observed
            .as_ref()
            .is_some_and(|o| o.at.elapsed() >= holder_duration);
    if !ours && !expired {
        return Ok(false);
    }
    let mut new = spec.clone();
    new.holder_identity = Some(config.identity.clone());
    new.lease_duration_seconds = Some(seconds);
    new.renew_time = Some(now());
    if !ours {
        new.acquire_time = Some(now());
        new.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    lease.spec = Some(new);
    match api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => {
            if !ours {
                tracing::info!(identity = %config.identity, previous = ?spec.holder_identity, "took over the lease");
            }
            Ok(true)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Gives the Lease up if this replica holds it, so another replica takes over at its next
/// renewal round instead of after the Lease expires (an operator rollout then leaves no gap).
pub async fn release(client: kube::Client, config: &LeaseConfig) {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let mut lease = match api.get_opt(&config.name).await {
        Ok(Some(lease)) => lease,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(lease = %config.name, error = %e, "cannot read the lease to release it");
            return;
        }
    };
    let Some(spec) = lease.spec.as_mut() else {
        return;
    };
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    match api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => {
            tracing::info!(identity = %config.identity, lease = %config.name, "released the lease")
        }
        Err(e) => tracing::warn!(lease = %config.name, error = %e, "cannot release the lease"),
    }
}
