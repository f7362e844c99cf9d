//! Per-backend concurrency limits. A request first tries to take one of `maxConnections`
//! slots; if none is free it may wait only while fewer than `maxPendingRequests` others wait.
//! Everyone else gets an immediate 503, so overload is shed instead of queued without bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use portico_proxy_api::Limits;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The limiter of one backend; kept across config reloads while its limits are unchanged.
#[derive(Debug)]
pub struct Limiter {
    config: Limits,
    slots: Option<Arc<Semaphore>>,
    pending: AtomicUsize,
}

/// Returned when both the slots and the waiting room are full.
#[derive(Debug, thiserror::Error)]
#[error("concurrency limit reached")]
pub struct LimitReached;

impl Limiter {
    /// A limiter for `config`.
    pub fn new(config: &Limits) -> Self {
        Self {
            config: config.clone(),
            slots: config
                .max_connections
                .map(|n| Arc::new(Semaphore::new(n as usize))),
            pending: AtomicUsize::new(0),
        }
    }

    /// The limits this limiter enforces.
    pub fn config(&self) -> &Limits {
        &self.config
    }

    /// Takes a slot without waiting (for TCP connections, where a queue makes no sense).
    pub fn try_acquire_now(&self) -> Result<Option<OwnedSemaphorePermit>, LimitReached> {
        match &self.slots {
            None => Ok(None),
            Some(s) => s
                .clone()
                .try_acquire_owned()
                .map(Some)
                .map_err(|_| LimitReached),
        }
    }

    /// Takes a slot (held until the permit drops), waiting only if the waiting room has space.
    pub async fn acquire(&self) -> Result<Option<OwnedSemaphorePermit>, LimitReached> {
        let Some(slots) = &self.slots else {
            return Ok(None);
        };
        if let Ok(p) = slots.clone().try_acquire_owned() {
            return Ok(Some(p));
        }
        let max_pending = self
            .config
            .max_pending_requests
            .map_or(usize::MAX, |n| n as usize);
        if self.pending.fetch_add(1, Ordering::AcqRel) >= max_pending {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(LimitReached);
        }
        let permit = slots.clone().acquire_owned().await;
        self.pending.fetch_sub(1, Ordering::AcqRel);
        permit.map(Some).map_err(|_| LimitReached)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn over_slots_and_waiting_room_is_refused_at_once() {
        let l = Arc::new(Limiter::new(&Limits {
            max_connections: Some(1),
            max_pending_requests: Some(1),
        }));
        let first = l.acquire().await.unwrap();
        let waiter = tokio::spawn({
            let l = l.clone();
            async move { l.acquire().await.map(|p| p.is_some()) }
        });
        while l.pending.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        assert!(l.acquire().await.is_err(), "third request is refused");
        drop(first);
        assert!(
            waiter.await.unwrap().unwrap(),
            "the waiter gets the freed slot"
        );
    }
}
