//! Unit tests of L1: the races between fills and writes (tickets, stripes, eviction), single
//! flight with cancellation, remote writes and clearing.

use std::time::Duration;

use super::*;

fn doc(version: u64) -> Cached {
    Cached::Doc {
        version,
        body: Bytes::from(format!("v{version}")),
    }
}

const TTL: Duration = Duration::from_secs(60);

impl L1 {
    /// The read-through shape the cache facade builds on `load_once`: a hit, else one load for
    /// all concurrent callers, reported as read from the store.
    async fn get_or_load<F, Fut>(
        &self,
        key: &str,
        ttl_of: impl Fn(&Cached) -> Duration,
        load: F,
    ) -> Result<(Cached, Tier), ServiceError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Cached, ServiceError>>,
    {
        if let Some(hit) = self.get(key) {
            return Ok((hit, Tier::L1));
        }
        self.load_once(key, true, ttl_of, || {
            let loading = load();
            async move { loading.await.map(|value| (value, Tier::Db)) }
        })
        .await
    }
}

#[tokio::test]
async fn a_remote_write_drops_older_entries_and_stops_older_fills() {
    let l1 = L1::new(1 << 20);
    l1.fill("new", l1.ticket("new"), doc(5), TTL);
    l1.fill("old", l1.ticket("old"), doc(3), TTL);
    let read = l1.ticket("later");
    l1.remote_write("new", 5);
    l1.remote_write("old", 4);
    l1.remote_write("later", 9);
    assert_eq!(
        l1.get("new"),
        Some(doc(5)),
        "an entry as new as the write stays"
    );
    assert_eq!(l1.get("old"), None, "an older entry goes");
    l1.fill("later", read, doc(8), TTL);
    assert_eq!(
        l1.get("later"),
        None,
        "a read that started before the write does not fill"
    );
}

#[tokio::test]
async fn clear_forgets_everything_and_stops_fills_in_flight() {
    let l1 = L1::new(1 << 20);
    l1.fill("a", l1.ticket("a"), doc(1), TTL);
    let read = l1.ticket("b");
    let write = l1.ticket("c");
    l1.clear();
    assert_eq!(l1.get("a"), None);
    l1.fill("b", read, doc(1), TTL);
    l1.complete_write("c", write, doc(2), TTL);
    assert!(
        l1.is_empty(),
        "fills and writes that began before the clear do not insert"
    );
}

#[tokio::test]
async fn a_fill_that_raced_a_write_is_dropped() {
    let l1 = L1::new(1 << 20);
    // A read starts (ticket), a write commits v2 and updates the cache, then the read's v1
    // result arrives: it must not replace v2.
    let read = l1.ticket("k");
    let write = l1.ticket("k");
    l1.complete_write("k", write, doc(2), TTL);
    l1.fill("k", read, doc(1), TTL);
    assert_eq!(l1.get("k"), Some(doc(2)));
}

#[tokio::test]
async fn a_raced_fill_is_dropped_even_if_the_newer_entry_was_evicted() {
    let l1 = L1::new(1 << 20);
    let read = l1.ticket("k");
    let write = l1.ticket("k");
    l1.complete_write("k", write, doc(2), TTL);
    l1.inner.entries.remove("k"); // as if evicted under memory pressure
    l1.fill("k", read, doc(1), TTL);
    assert_eq!(l1.get("k"), None, "no stale v1 after the eviction of v2");
}

#[tokio::test]
async fn overlapping_writes_never_leave_an_older_version() {
    let l1 = L1::new(1 << 20);
    let first = l1.ticket("k");
    let second = l1.ticket("k");
    // The later version lands first; the earlier write finishes afterwards and is ignored.
    l1.complete_write("k", second, doc(3), TTL);
    l1.complete_write("k", first, doc(2), TTL);
    assert_eq!(l1.get("k"), Some(doc(3)));
    // If the newer entry was evicted in between, the older write cannot know: it inserts
    // nothing and the next read goes to the store.
    let a = l1.ticket("k");
    let b = l1.ticket("k");
    l1.complete_write("k", b, doc(5), TTL);
    l1.inner.entries.remove("k");
    l1.complete_write("k", a, doc(4), TTL);
    assert_eq!(l1.get("k"), None);
}

#[tokio::test]
async fn contended_writes_in_version_order_keep_a_hot_key_cached() {
    let l1 = L1::new(1 << 20);
    let ticket = l1.ticket("k");
    l1.fill("k", ticket, doc(1), TTL);
    // Writers overlap (each takes its ticket before the other completes) but commit in order,
    // as row locks make them: each replaces the older entry.
    let tickets: Vec<_> = (0..5).map(|_| l1.ticket("k")).collect();
    for (i, ticket) in tickets.into_iter().enumerate() {
        l1.complete_write("k", ticket, doc(2 + i as u64), TTL);
        assert_eq!(l1.get("k"), Some(doc(2 + i as u64)));
    }
}

#[tokio::test]
async fn an_uncontended_write_replaces_the_entry() {
    let l1 = L1::new(1 << 20);
    let ticket = l1.ticket("k");
    l1.fill("k", ticket, doc(1), TTL);
    let write = l1.ticket("k");
    l1.complete_write("k", write, Cached::Missing { version: 2 }, TTL);
    assert_eq!(l1.get("k"), Some(Cached::Missing { version: 2 }));
}

#[tokio::test]
async fn concurrent_misses_share_one_load() {
    let l1 = L1::new(1 << 20);
    let loads = std::sync::atomic::AtomicUsize::new(0);
    let load = || async {
        loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(doc(7))
    };
    let calls = (0..100).map(|_| l1.get_or_load("k", |_| TTL, load));
    let results = futures::future::join_all(calls).await;
    assert!(results.iter().all(|r| r.as_ref().unwrap().0 == doc(7)));
    assert_eq!(loads.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(
        l1.lookups().coalesced.sum(),
        99,
        "every caller but the one that loaded joined its load"
    );
    let (hit, tier) = l1.get_or_load("k", |_| TTL, load).await.unwrap();
    assert_eq!((hit, tier), (doc(7), Tier::L1));
}

/// Fails the test instead of hanging it when a future never completes.
async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not complete within 5 s"))
}

fn flights(l1: &L1, key: &str) -> usize {
    let stripe = l1.stripe_of(key);
    l1.inner.stripes[stripe].lock().inflight.len()
}

#[tokio::test]
async fn a_cancelled_leader_hands_the_load_to_a_waiter() {
    let l1 = L1::new(1 << 20);
    let loads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let load = |value: u64, stall: bool| {
        let loads = loads.clone();
        move || {
            let loads = loads.clone();
            async move {
                loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if stall {
                    std::future::pending::<()>().await;
                }
                Ok(doc(value))
            }
        }
    };
    // The leader starts the store read and stalls in it.
    let leader = tokio::spawn({
        let (l1, load) = (l1.clone(), load(1, true));
        async move { l1.get_or_load("k", |_| TTL, load).await }
    });
    while loads.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    // A waiter joins the same flight: it must not start a read of its own while the leader runs.
    let waiter = tokio::spawn({
        let (l1, load) = (l1.clone(), load(2, false));
        async move { l1.get_or_load("k", |_| TTL, load).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !waiter.is_finished(),
        "the waiter waits for the leader's read"
    );
    assert_eq!(loads.load(std::sync::atomic::Ordering::SeqCst), 1);
    // The leader's caller goes away: the parked waiter takes the load over, exactly once.
    leader.abort();
    let (value, tier) = within("the waiter", waiter).await.unwrap().unwrap();
    assert_eq!((value, tier), (doc(2), Tier::Db));
    assert_eq!(loads.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(flights(&l1, "k"), 0, "a finished flight leaves its stripe");
    assert_eq!(l1.get("k"), Some(doc(2)), "and its result is cached");
}

#[tokio::test]
async fn a_write_detaches_reads_in_flight() {
    let l1 = L1::new(1 << 20);
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    let old_read = {
        let gate = gate.clone();
        let l1 = l1.clone();
        tokio::spawn(async move {
            l1.get_or_load(
                "k",
                |_| TTL,
                || {
                    let gate = gate.clone();
                    async move {
                        gate.notified().await;
                        Ok(doc(1))
                    }
                },
            )
            .await
        })
    };
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    // A write commits v2 while the old read is blocked, but finds the key not cached.
    let write = l1.ticket("k");
    l1.complete_write("k", write, doc(2), TTL);
    l1.inner.entries.remove("k");
    // A read after the write must not join the old flight.
    let (value, _) = within(
        "a read after the write",
        l1.get_or_load("k", |_| TTL, || async { Ok(doc(2)) }),
    )
    .await
    .unwrap();
    assert_eq!(value, doc(2));
    gate.notify_one();
    assert_eq!(
        within("the old read", old_read).await.unwrap().unwrap().0,
        doc(1)
    );
    assert_eq!(l1.get("k"), Some(doc(2)), "the old read did not overwrite");
}

#[tokio::test]
async fn errors_are_not_cached() {
    let l1 = L1::new(1 << 20);
    let failing = || async { Err(ServiceError::new(crate::error::ErrorCode::Timeout, "slow")) };
    assert!(l1.get_or_load("k", |_| TTL, failing).await.is_err());
    let (value, tier) = l1
        .get_or_load("k", |_| TTL, || async { Ok(doc(1)) })
        .await
        .unwrap();
    assert_eq!((value, tier), (doc(1), Tier::Db));
}

#[tokio::test]
async fn entries_expire_and_ttls_are_jittered() {
    let l1 = L1::new(1 << 20);
    let ticket = l1.ticket("k");
    l1.fill("k", ticket, doc(1), Duration::from_millis(30));
    assert!(l1.get("k").is_some());
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(l1.get("k"), None, "expired");
    let ttls: std::collections::HashSet<_> =
        (0..100).map(|_| jitter(Duration::from_secs(100))).collect();
    assert!(ttls.len() > 90, "jitter spreads expiries");
    assert!(
        ttls.iter()
            .all(|t| *t >= Duration::from_secs(90) && *t < Duration::from_secs(110))
    );
}

#[tokio::test]
async fn the_cache_is_bounded_by_bytes() {
    let l1 = L1::new(1 << 20);
    let body = Bytes::from(vec![b'x'; 10_000]);
    for i in 0..1000 {
        let key = format!("k{i}");
        let ticket = l1.ticket(&key);
        l1.fill(
            &key,
            ticket,
            Cached::Doc {
                version: 1,
                body: body.clone(),
            },
            TTL,
        );
    }
    assert!(
        l1.weight() <= 1 << 20,
        "weight {} over the bound",
        l1.weight()
    );
    assert!(l1.len() < 200);
}
