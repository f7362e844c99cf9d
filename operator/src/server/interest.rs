//! Which on-demand streams use which backends, so that a change wakes only the streams that
//! use a backend it changed rather than every stream (each of which would filter the new set
//! only to find nothing of its own in it).
//!
//! ```text
//!  index ──mesh-wide Backends──► follow(): names changed since the last set ──► Interest
//!                                                 │ by backend name → the streams using it
//!                                                 ▼
//!                                   Notify of each such stream ──► its pump looks again
//! ```
//!
//! A stream's subscriptions change only through [`Interest::resubscribe`], which registers the
//! new names before the stream sees them: a change published in between wakes the stream at
//! worst once too often, never too few times.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{Notify, watch};

use super::stream::Wanted;
use crate::index::Backends;

/// The on-demand streams by the backend names they use.
#[derive(Debug, Default)]
pub(crate) struct Interest {
    by_backend: Mutex<HashMap<String, HashMap<u64, Arc<Notify>>>>,
}

impl Interest {
    /// Applies `subscribe` and `unsubscribe` to the subscriptions of stream `key` (woken through
    /// `poke`, its subscriptions in `wanted`): the names it adds are registered before the
    /// stream sees them, the names it drops unregistered after.
    pub(crate) fn resubscribe(
        &self,
        key: u64,
        poke: &Arc<Notify>,
        wanted: &watch::Sender<Wanted>,
        subscribe: impl IntoIterator<Item = String>,
        unsubscribe: &[String],
    ) {
        let mut by_backend = self
            .by_backend
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let before = wanted.borrow().clone();
        let mut next: BTreeSet<String> = (*before).clone();
        for n in unsubscribe {
            next.remove(n);
        }
        next.extend(subscribe);
        if next == *before {
            return;
        }
        for n in next.difference(&before) {
            by_backend
                .entry(n.clone())
                .or_default()
                .insert(key, poke.clone());
        }
        let gone: Vec<String> = before.difference(&next).cloned().collect();
        wanted.send_replace(Arc::new(next));
        forget(&mut by_backend, key, gone.iter());
    }

    /// Stream `key` ended: it no longer uses `names`.
    pub(crate) fn forget<'a>(&self, key: u64, names: impl IntoIterator<Item = &'a String>) {
        let mut by_backend = self
            .by_backend
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        forget(&mut by_backend, key, names);
    }

    /// Wakes every stream that uses one of `names`; how many were woken.
    pub(crate) fn changed<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> usize {
        let by_backend = self
            .by_backend
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut woken: HashMap<u64, &Arc<Notify>> = HashMap::new();
        for n in names {
            if let Some(streams) = by_backend.get(n) {
                woken.extend(streams.iter().map(|(k, p)| (*k, p)));
            }
        }
        for poke in woken.values() {
            // A permit is stored when the stream is not waiting: it looks again when it is.
            poke.notify_one();
        }
        woken.len()
    }
}

fn forget<'a>(
    by_backend: &mut HashMap<String, HashMap<u64, Arc<Notify>>>,
    key: u64,
    names: impl IntoIterator<Item = &'a String>,
) {
    for n in names {
        if let Some(streams) = by_backend.get_mut(n) {
            streams.remove(&key);
            if streams.is_empty() {
                by_backend.remove(n);
            }
        }
    }
}

/// Follows the mesh-wide backend sets and wakes the streams that use what changed in each,
/// until the index goes away.
pub(crate) async fn follow(mut backends: watch::Receiver<Arc<Backends>>, interest: Arc<Interest>) {
    let mut last = backends.borrow_and_update().clone();
    while backends.changed().await.is_ok() {
        let next = backends.borrow_and_update().clone();
        interest.changed(last.changed_names(&next));
        last = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Wanted {
        Arc::new(list.iter().map(|n| n.to_string()).collect())
    }

    #[tokio::test]
    async fn a_change_wakes_only_the_streams_that_use_it() {
        let interest = Arc::new(Interest::default());
        let (one, two) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let (wanted_one, mut seen_one) = watch::channel(names(&[]));
        let (wanted_two, _) = watch::channel(names(&[]));
        interest.resubscribe(1, &one, &wanted_one, ["a".into(), "b".into()], &[]);
        interest.resubscribe(2, &two, &wanted_two, ["b".into()], &[]);
        assert!(seen_one.has_changed().unwrap());
        assert_eq!(*seen_one.borrow_and_update(), names(&["a", "b"]));

        assert_eq!(interest.changed(["a", "z"]), 1);
        one.notified().await;
        assert_eq!(interest.changed(["b"]), 2);
        interest.resubscribe(1, &one, &wanted_one, [], &["a".into(), "b".into()]);
        assert_eq!(*wanted_one.borrow(), names(&[]));
        assert_eq!(
            interest.changed(["a", "b"]),
            1,
            "only stream 2 still uses b"
        );
        interest.forget(2, names(&["b"]).iter());
        assert_eq!(interest.changed(["b"]), 0);
        assert!(interest.by_backend.lock().unwrap().is_empty());
    }
}
