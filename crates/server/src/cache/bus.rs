//! The invalidation bus: every instance learns every committed change `(key, version)` of every
//! other instance and drops older L1 entries, over Redis pub/sub on one channel
//! (`<prefix>:bus`; on a cluster a plain `PUBLISH` reaches the subscribers of every node).
//!
//! Pub/sub delivers at most once, and a frozen Redis closes no socket, so the bus checks itself:
//! every instance publishes a heartbeat every `cache.bus_heartbeat`, and every message carries
//! its publisher's sequence number. An instance **trusts its caches** only while it hears its own
//! heartbeat and every live publisher's within `cache.bus_silence`; a gap in a sequence clears
//! L1 at once. While not trusted, reads bypass L1 and L2 and go to the store; when trust comes
//! back L1 is cleared first (it may have missed messages). An instance whose L2 steps failed
//! after a commit stops heartbeating until it has repaired them, so the others bypass too.
//!
//! Which instances may be writing: those heard on the bus, and those the store says are alive
//! (`dmw_instances`, refreshed by each instance every `bus_forget_after / 4`; see `Service`).
//! A silent instance is waited for — the others keep bypassing — until it has been silent on
//! the bus *and* absent from the store for `cache.bus_forget_after`: an instance cut off from
//! Redis but alive is never forgotten (its writes cannot be announced), a dead one is after
//! that bound. A clean shutdown says goodbye (`B`) and is forgotten at once.
//!
//! Message format (text): `<instance> <seq> H` (heartbeat), `<instance> <seq> I <key> <version>
//! … @<unix µs>` (changes; `i` from an instance not caught up, not a heartbeat; the last token,
//! the publisher's clock when it sent them, gives the invalidation delay — a receiver that does
//! not know it ends its key/version loop there), `<instance> <seq> B` (goodbye).
//!
//! The bus also carries a hint that token revocations changed (the change of the key
//! [`REVOCATIONS`], which no document key can be): receivers read the revocation table at once
//! instead of at their next poll. A hint that is lost costs only that: the poll still runs.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::{mpsc, oneshot, watch};

use super::l1::L1;
use super::l2::L2;
use crate::config::CacheConfig;

/// Invalidations sent in one message at most.
const MAX_BATCH: usize = 256;

/// The pseudo key announcing "the token revocations changed" (document keys never start with
/// `!`).
pub const REVOCATIONS: &str = "!revocations";

/// One committed change to announce, and who waits for it to be sent.
struct Change {
    key: String,
    version: u64,
    sent: oneshot::Sender<()>,
}

/// Counters read by tests and (later) the metrics endpoint.
#[derive(Debug, Default)]
pub struct BusCounters {
    /// Messages published by this instance (heartbeats included).
    pub published: AtomicU64,
    /// Invalidations from other instances applied to L1.
    pub applied: AtomicU64,
    /// Sequence gaps seen (messages lost): each cleared L1.
    pub gaps: AtomicU64,
    /// Times this instance stopped trusting its caches.
    pub distrusted: AtomicU64,
    /// Revocation announcements received from other instances.
    pub revocation_hints: AtomicU64,
    /// From another instance's publish (its clock) to this one applying the changes.
    pub delay: crate::ops::histogram::Histogram,
}

/// The bus handle held by the cache.
pub struct Bus {
    id: String,
    changes: mpsc::UnboundedSender<Change>,
    /// Asks the publisher to say goodbye (and stop); answered once said.
    byes: mpsc::UnboundedSender<oneshot::Sender<()>>,
    trusted: AtomicBool,
    counters: BusCounters,
    silence: Duration,
    forget_after: Duration,
    l2_timeout: Duration,
    /// Other instances the store says are alive (the witness; see `Service`'s presence task).
    present: Mutex<HashSet<String>>,
    /// The store answered at least once: until then a cut-off instance could go unnoticed.
    present_known: AtomicBool,
    /// Notified when another instance announced new revocations, or when messages may have
    /// been lost (so one may have been missed).
    revocations_changed: tokio::sync::Notify,
    /// Test-only: publish nothing, as if this process froze or died.
    #[doc(hidden)]
    pub mute: AtomicBool,
}

/// What the publisher is asked to send.
struct Inbox {
    changes: mpsc::UnboundedReceiver<Change>,
    byes: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
}

/// What the subscriber knows of each publisher.
struct Heard {
    seq: u64,
    at: Instant,
}

impl Bus {
    /// Starts the publisher, the subscriber and the watchdog; they end when `stop` turns true.
    pub fn start(
        config: &CacheConfig,
        l1: L1,
        l2: Arc<L2>,
        stop: watch::Receiver<bool>,
    ) -> Result<Arc<Bus>, String> {
        let nodes: Vec<String> = match &config.l2_url {
            Some(url) => vec![url.clone()],
            None => config.l2_cluster_nodes.clone(),
        };
        let clients = nodes
            .iter()
            .map(|url| redis::Client::open(url.as_str()).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let (changes, queue) = mpsc::unbounded_channel();
        let (byes, bye_requests) = mpsc::unbounded_channel();
        let bus = Arc::new(Bus {
            id: format!("{:016x}", fastrand::u64(..)),
            changes,
            byes,
            trusted: AtomicBool::new(false),
            counters: BusCounters::default(),
            silence: config.bus_silence,
            forget_after: config.bus_forget_after,
            l2_timeout: config.l2_timeout,
            present: Mutex::new(HashSet::new()),
            present_known: AtomicBool::new(false),
            revocations_changed: tokio::sync::Notify::new(),
            mute: AtomicBool::new(false),
        });
        let channel = format!("{}:bus", config.l2_prefix);
        let heard = Arc::new(Mutex::new(HashMap::<String, Heard>::new()));
        let subscribed = Arc::new(AtomicBool::new(false));
        // The bus has a thread (and a small runtime) of its own. As tasks on the shared runtime,
        // the subscriber waited behind request tasks before it could apply an invalidation
        // (measured: p99 of the stale window 9.9 ms at half of peak load, 3.8 ms on its own
        // thread; bench/staleness.sh), and a heartbeat delayed past `bus_silence` by an
        // overloaded runtime would make every instance drop its caches exactly when busy.
        let publisher = bus.clone().publish(
            clients.clone(),
            channel.clone(),
            Inbox {
                changes: queue,
                byes: bye_requests,
            },
            config.bus_heartbeat,
            // L2, for repairs, and the runtime they run on.
            (l2, tokio::runtime::Handle::current()),
            stop.clone(),
        );
        let subscriber = bus.clone().subscribe(
            clients,
            channel,
            l1.clone(),
            heard.clone(),
            subscribed.clone(),
            stop.clone(),
        );
        let watchdog = bus
            .clone()
            .watch(l1, heard, subscribed, config.bus_heartbeat, stop);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the invalidation bus: {e}"))?;
        std::thread::Builder::new()
            .name("dmw-bus".into())
            .spawn(move || {
                runtime.block_on(async move {
                    tokio::join!(publisher, subscriber, watchdog);
                })
            })
            .map_err(|e| format!("cannot start the invalidation bus: {e}"))?;
        Ok(bus)
    }

    /// True while this instance may serve from its caches (see the module documentation).
    pub fn trusted(&self) -> bool {
        self.trusted.load(Ordering::Acquire)
    }

    pub fn counters(&self) -> &BusCounters {
        &self.counters
    }

    /// This instance's id on the bus (and in the store's `dmw_instances`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// How long an instance silent on the bus and absent from the store is waited for.
    pub fn forget_after(&self) -> Duration {
        self.forget_after
    }

    /// The other instances the store says were alive lately.
    pub fn set_present(&self, ids: HashSet<String>) {
        *self.present.lock() = ids;
        self.present_known.store(true, Ordering::Release);
    }

    /// Says goodbye on the bus (a clean shutdown): the others stop waiting for this instance
    /// at once. Heartbeats stop.
    pub async fn leave(&self) {
        let (said, heard) = oneshot::channel();
        if self.byes.send(said).is_ok() {
            let _ = tokio::time::timeout(4 * self.l2_timeout, heard).await;
        }
    }

    /// Announces committed changes; returns once they were published, or after the time
    /// budget (a failed publish never fails the write: the heartbeat rule bounds staleness).
    pub async fn announce(&self, changes: impl IntoIterator<Item = (String, u64)>) {
        let mut sent = Vec::new();
        for (key, version) in changes {
            let (tx, rx) = oneshot::channel();
            if self
                .changes
                .send(Change {
                    key,
                    version,
                    sent: tx,
                })
                .is_ok()
            {
                sent.push(rx);
            }
        }
        if sent.is_empty() {
            return;
        }
        let all = futures_util::future::join_all(sent);
        let _ = tokio::time::timeout(2 * self.l2_timeout, all).await;
    }

    /// Tells the other instances to read the revocations again (see the module documentation).
    pub async fn announce_revocations(&self) {
        self.announce([(REVOCATIONS.to_string(), 0)]).await;
    }

    /// Completes when another instance announced revocations, or messages may have been lost.
    pub async fn revocations_changed(&self) {
        self.revocations_changed.notified().await;
    }

    /// The publisher: sends queued changes in batches, and a heartbeat every `every` while this
    /// instance has nothing to repair in L2. One connection, one message at a time, so the
    /// sequence numbers arrive in order.
    async fn publish(
        self: Arc<Bus>,
        clients: Vec<redis::Client>,
        channel: String,
        inbox: Inbox,
        every: Duration,
        (l2, main): (Arc<L2>, tokio::runtime::Handle),
        mut stop: watch::Receiver<bool>,
    ) {
        let mut node = 0;
        let mut conn = None;
        let mut seq = 0u64;
        let mut leaving = None;
        let Inbox {
            changes: mut queue,
            byes: mut bye_requests,
        } = inbox;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut batch = Vec::new();
            tokio::select! {
                _ = stop.changed() => return,
                _ = tick.tick() => {}
                received = queue.recv_many(&mut batch, MAX_BATCH) => {
                    if received == 0 { return; }
                }
                bye = bye_requests.recv() => leaving = bye,
            }
            if self.mute.load(Ordering::Relaxed) {
                continue;
            }
            // The repair runs on the main runtime: a reconnect inside redis-rs spawns its
            // connection's driver on the current runtime, which must not be this thread's.
            let caught_up = !l2.has_pending_repair() || {
                let l2 = l2.clone();
                main.spawn(async move { l2.repair().await })
                    .await
                    .unwrap_or(false)
            };
            if batch.is_empty() && leaving.is_none() && !caught_up {
                continue; // no heartbeat, so the others bypass their caches
            }
            seq += 1;
            let mut message = format!("{} {seq} ", self.id);
            if leaving.is_some() && caught_up {
                message.push('B');
            } else if batch.is_empty() {
                message.push('H');
            } else {
                // Lower case: "not caught up", so this message does not count as a heartbeat.
                message.push(if caught_up { 'I' } else { 'i' });
                for change in &batch {
                    message.push_str(&format!(" {} {}", change.key, change.version));
                }
                message.push_str(&format!(" @{}", unix_micros()));
            }
            if conn.is_none() {
                conn = self.connect(&clients[node % clients.len()]).await;
            }
            let published = match &mut conn {
                Some(c) => {
                    let send = redis::cmd("PUBLISH").arg(&channel).arg(&message).to_owned();
                    matches!(
                        tokio::time::timeout(self.l2_timeout, send.query_async::<i64>(c)).await,
                        Ok(Ok(_))
                    )
                }
                None => false,
            };
            if published {
                self.counters.published.fetch_add(1, Ordering::Relaxed);
            } else {
                // Lost or unsure: the next message's sequence shows a gap to every receiver,
                // which clears their L1. Try the next seed node for the next message.
                conn = None;
                node += 1;
            }
            for change in batch {
                let _ = change.sent.send(());
            }
            if let Some(said) = leaving.take() {
                // Not caught up, this instance does not say goodbye: the others keep waiting
                // for it (and bypassing) until it is forgotten.
                let _ = said.send(());
                return;
            }
        }
    }

    async fn connect(&self, client: &redis::Client) -> Option<ConnectionManager> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.l2_timeout.max(Duration::from_millis(200))))
            .set_response_timeout(Some(self.l2_timeout))
            .set_number_of_retries(0);
        let connect = client.get_connection_manager_with_config(config);
        tokio::time::timeout(Duration::from_secs(1), connect)
            .await
            .ok()?
            .ok()
    }

    /// The subscriber: applies other instances' changes to L1 and records who was heard.
    async fn subscribe(
        self: Arc<Bus>,
        clients: Vec<redis::Client>,
        channel: String,
        l1: L1,
        heard: Arc<Mutex<HashMap<String, Heard>>>,
        subscribed: Arc<AtomicBool>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut node = 0;
        loop {
            let client = &clients[node % clients.len()];
            node += 1;
            let pubsub = tokio::time::timeout(Duration::from_secs(1), async {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(&channel).await?;
                Ok::<_, redis::RedisError>(pubsub)
            })
            .await;
            let Ok(Ok(pubsub)) = pubsub else {
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            };
            // Whatever was sent while unsubscribed is lost: start from a clean L1. The watchdog
            // restores trust once every publisher known before was heard again (or is gone).
            l1.clear();
            self.revocations_changed.notify_one();
            subscribed.store(true, Ordering::Release);
            let mut messages = pubsub.into_on_message();
            // A half-open connection (a partition without a reset) never ends the stream: when
            // this instance has not heard itself for a while, subscribe again.
            let patience = 4 * self.silence;
            let subscribed_at = Instant::now();
            let mut check = tokio::time::interval(self.silence);
            loop {
                tokio::select! {
                    _ = stop.changed() => return,
                    message = messages.next() => match message {
                        Some(message) => self.receive(message.get_payload_bytes(), &l1, &heard),
                        None => break, // the connection closed
                    },
                    _ = check.tick() => {
                        let deaf = heard
                            .lock()
                            .get(&self.id)
                            .is_none_or(|h| h.at.elapsed() > patience);
                        if deaf && subscribed_at.elapsed() > patience {
                            break;
                        }
                    }
                }
            }
            subscribed.store(false, Ordering::Release);
            self.distrust();
            tracing::warn!("the invalidation bus connection closed or went deaf; resubscribing");
        }
    }

    fn receive(&self, payload: &[u8], l1: &L1, heard: &Mutex<HashMap<String, Heard>>) {
        let Ok(text) = std::str::from_utf8(payload) else {
            return;
        };
        let mut parts = text.split(' ');
        let (Some(from), Some(Ok(seq))) = (parts.next(), parts.next().map(str::parse::<u64>))
        else {
            return;
        };
        let kind = parts.next();
        let alive = matches!(kind, Some("H" | "I"));
        let gap = {
            let mut heard = heard.lock();
            let previous = heard.get(from).map(|h| (h.seq, h.at));
            // A message from an instance that is not caught up is no sign of life; a first one
            // counts as long silent.
            let long_ago = || {
                Instant::now()
                    .checked_sub(self.silence)
                    .unwrap_or_else(Instant::now)
            };
            let at = match previous {
                _ if alive => Instant::now(),
                Some((_, at)) => at,
                None => long_ago(),
            };
            heard.insert(from.to_string(), Heard { seq, at });
            previous.is_some_and(|(last, _)| seq != last + 1)
        };
        if gap {
            self.counters.gaps.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                publisher = from,
                "invalidation messages were lost; L1 is cleared"
            );
            l1.clear();
            self.revocations_changed.notify_one();
        }
        if kind == Some("B") {
            heard.lock().remove(from);
            self.present.lock().remove(from);
            return;
        }
        if from == self.id || !matches!(kind, Some("I" | "i")) {
            return; // this instance's own changes are in its L1 already
        }
        let mut sent_at = None;
        while let Some(key) = parts.next() {
            if let Some(micros) = key.strip_prefix('@') {
                sent_at = micros.parse::<u64>().ok();
                break;
            }
            let Some(Ok(version)) = parts.next().map(str::parse) else {
                break;
            };
            if key == REVOCATIONS {
                self.counters
                    .revocation_hints
                    .fetch_add(1, Ordering::Relaxed);
                self.revocations_changed.notify_one();
                continue;
            }
            l1.remote_write(key, version);
            self.counters.applied.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(sent_at) = sent_at {
            // A clock behind the publisher's reads as no delay rather than a negative one.
            let delay = unix_micros().saturating_sub(sent_at);
            self.counters.delay.observe(Duration::from_micros(delay));
        }
    }

    /// The watchdog: trust while subscribed and every publisher heard within `silence`.
    async fn watch(
        self: Arc<Bus>,
        l1: L1,
        heard: Arc<Mutex<HashMap<String, Heard>>>,
        subscribed: Arc<AtomicBool>,
        every: Duration,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(every / 2);
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tick.tick() => {}
            }
            let whole = {
                let mut heard = heard.lock();
                let present = self.present.lock().clone();
                // Forgotten instances leave the map (ids are new at every start).
                heard.retain(|id, h| h.at.elapsed() < self.forget_after || present.contains(id));
                subscribed.load(Ordering::Acquire) && self.whole(&heard)
            };
            if whole && !self.trusted() {
                l1.clear(); // filled while distrusted: it may have missed messages
                self.trusted.store(true, Ordering::Release);
                tracing::info!("the invalidation bus is whole: caches are served again");
            } else if !whole {
                self.distrust();
            }
        }
    }

    /// Every instance that may be writing was heard within `silence`: this one, every publisher
    /// heard before (a silent one is forgotten only once it is also gone from the store for
    /// `forget_after`), and every instance the store says is alive.
    fn whole(&self, heard: &HashMap<String, Heard>) -> bool {
        let present = self.present.lock();
        let recent = |id: &str| heard.get(id).is_some_and(|h| h.at.elapsed() < self.silence);
        self.present_known.load(Ordering::Acquire)
            && recent(&self.id)
            && heard.iter().all(|(id, h)| {
                h.at.elapsed() < self.silence
                    || (h.at.elapsed() >= self.forget_after && !present.contains(id))
            })
            && present.iter().all(|id| id == &self.id || recent(id))
    }

    fn distrust(&self) {
        if self.trusted.swap(false, Ordering::AcqRel) {
            self.counters.distrusted.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                "the invalidation bus is silent or broken: reads bypass the caches until it is whole"
            );
        }
    }
}

/// This machine's clock in microseconds since 1970 (0 before it).
fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Cached;

    fn bus() -> Bus {
        Bus {
            id: "me".to_string(),
            changes: mpsc::unbounded_channel().0,
            byes: mpsc::unbounded_channel().0,
            trusted: AtomicBool::new(true),
            counters: BusCounters::default(),
            silence: Duration::from_millis(400),
            forget_after: Duration::from_millis(800),
            l2_timeout: Duration::from_millis(50),
            present: Mutex::new(HashSet::new()),
            present_known: AtomicBool::new(true),
            revocations_changed: tokio::sync::Notify::new(),
            mute: AtomicBool::new(false),
        }
    }

    fn doc(version: u64) -> Cached {
        Cached::Doc {
            version,
            body: bytes::Bytes::from_static(b"{}"),
        }
    }

    fn fill(l1: &L1, key: &str, version: u64) {
        l1.fill(key, l1.ticket(key), doc(version), Duration::from_secs(60));
    }

    #[test]
    fn another_instances_changes_drop_older_entries_only() {
        let (bus, l1, heard) = (bus(), L1::new(1 << 20), Mutex::new(HashMap::new()));
        fill(&l1, "g/c/a", 3);
        fill(&l1, "g/c/b", 9);
        bus.receive(b"other 1 I g/c/a 4 g/c/b 9", &l1, &heard);
        assert_eq!(l1.get("g/c/a"), None, "version 3 is older than 4");
        assert_eq!(
            l1.get("g/c/b"),
            Some(doc(9)),
            "version 9 is not older than 9"
        );
        assert_eq!(bus.counters.applied.load(Ordering::Relaxed), 2);
        assert_eq!(bus.counters.delay.count(), 0, "no send time, no delay");
        // With the publisher's send time: the changes still apply, and the delay is measured.
        fill(&l1, "g/c/d", 3);
        let sent = unix_micros() - 5_000;
        let message = format!("other 2 I g/c/d 4 @{sent}");
        bus.receive(message.as_bytes(), &l1, &heard);
        assert_eq!(l1.get("g/c/d"), None);
        assert_eq!(bus.counters.applied.load(Ordering::Relaxed), 3);
        assert_eq!(bus.counters.delay.count(), 1);
        let seconds = bus.counters.delay.sum_seconds();
        assert!((0.005..1.0).contains(&seconds), "{seconds}");
        fill(&l1, "g/c/a", 3);
        bus.receive(b"me 1 I g/c/a 5", &l1, &heard);
        assert_eq!(
            l1.get("g/c/a"),
            Some(doc(3)),
            "own changes are already in L1"
        );
    }

    #[test]
    fn a_gap_in_a_sequence_clears_l1() {
        let (bus, l1, heard) = (bus(), L1::new(1 << 20), Mutex::new(HashMap::new()));
        bus.receive(b"other 1 H", &l1, &heard);
        bus.receive(b"other 2 H", &l1, &heard);
        fill(&l1, "g/c/a", 1);
        bus.receive(b"other 4 H", &l1, &heard);
        assert!(l1.is_empty(), "message 3 was lost: anything may be stale");
        assert_eq!(bus.counters.gaps.load(Ordering::Relaxed), 1);
        fill(&l1, "g/c/a", 1);
        bus.receive(b"other 5 H", &l1, &heard);
        bus.receive(b"garbage", &l1, &heard);
        bus.receive(b"other x H", &l1, &heard);
        assert!(!l1.is_empty(), "in order, or malformed: nothing cleared");
    }

    #[test]
    fn a_silent_or_not_caught_up_instance_keeps_the_bus_from_being_whole() {
        let (bus, l1, heard) = (bus(), L1::new(1 << 20), Mutex::new(HashMap::new()));
        bus.receive(b"me 1 H", &l1, &heard);
        assert!(bus.whole(&heard.lock()), "alone and heard: whole");
        bus.receive(b"new 1 i g/c/a 2", &l1, &heard);
        assert!(
            !bus.whole(&heard.lock()),
            "a first message that is not caught up"
        );
        bus.receive(b"new 2 H", &l1, &heard);
        assert!(bus.whole(&heard.lock()));
        bus.set_present(HashSet::from(["absent".to_string()]));
        assert!(!bus.whole(&heard.lock()), "alive in the store, never heard");
        bus.receive(b"absent 1 B", &l1, &heard);
        assert!(bus.whole(&heard.lock()), "a goodbye ends the wait");
    }

    #[test]
    fn changes_of_an_instance_not_caught_up_are_applied_but_are_no_heartbeat() {
        let (bus, l1, heard) = (bus(), L1::new(1 << 20), Mutex::new(HashMap::new()));
        bus.receive(b"other 1 H", &l1, &heard);
        let alive_at = heard.lock()["other"].at;
        std::thread::sleep(Duration::from_millis(5));
        fill(&l1, "g/c/a", 1);
        bus.receive(b"other 2 i g/c/a 2", &l1, &heard);
        assert_eq!(l1.get("g/c/a"), None, "the change is applied");
        let heard = heard.lock();
        assert_eq!(
            heard["other"].at, alive_at,
            "but it does not count as alive"
        );
        assert_eq!(heard["other"].seq, 2);
    }
}
