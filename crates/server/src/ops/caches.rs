//! The cache tiers at each scrape: L1's entries and bytes; L2's lookups, hits, fills and
//! failures and its breaker; the invalidation bus's messages, invalidations applied, sequence
//! gaps and trust. Read from the tiers' own counters, so the hit path records nothing more.

use std::sync::{Arc, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::cache::Cache;

/// The service's cache, once it exists (the registry is built before it).
#[derive(Clone, Default)]
pub struct Caches(Arc<OnceLock<Cache>>);

impl std::fmt::Debug for Caches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Caches")
    }
}

impl Caches {
    pub fn watch(&self, cache: Cache) {
        let _ = self.0.set(cache);
    }
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let g = ConstGauge::new(v as i64);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

impl Collector for Caches {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(cache) = self.0.get() else {
            return Ok(());
        };
        let read = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        let l1 = cache.l1();
        gauge(
            &mut e,
            "l1_entries",
            "Documents and remembered misses in L1",
            l1.len() as u64,
        )?;
        gauge(
            &mut e,
            "l1_bytes",
            "Bytes L1 holds (keys, encoded documents, bookkeeping), at most cache.l1_max_bytes",
            l1.weight(),
        )?;
        let mut results = Vec::with_capacity(6);
        let lookups = l1.lookups();
        for (result, count) in [
            ("hit", &lookups.hit),
            ("negative", &lookups.negative),
            ("miss", &lookups.miss),
            ("coalesced", &lookups.coalesced),
        ] {
            results.push(("l1", result, count.sum()));
        }
        if let Some(l2) = cache.l2() {
            let c = l2.counters();
            let (asked, found) = (read(&c.lookups), read(&c.hits));
            results.push(("l2", "hit", found));
            results.push(("l2", "miss", asked.saturating_sub(found)));
        }
        let mut family = e.encode_descriptor(
            "cache_lookups",
            "Cache lookups by tier and result: hit (a document), negative (a remembered miss), \
             miss; coalesced: of the L1 misses, those that joined a load already in flight",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        // One descriptor, then each labelled series of it.
        for (tier, result, count) in results {
            let labels = [("tier", tier), ("result", result)];
            ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
        }
        if let Some(l2) = cache.l2() {
            let c = l2.counters();
            counter(
                &mut e,
                "l2_lookups",
                "L2 (Redis) lookups made",
                read(&c.lookups),
            )?;
            counter(&mut e, "l2_hits", "Keys L2 answered", read(&c.hits))?;
            counter(&mut e, "l2_fills", "Fills L2 accepted", read(&c.fills))?;
            counter(
                &mut e,
                "l2_fills_refused",
                "Fills L2 refused (a write in progress, an older version, or too late)",
                read(&c.fills_refused),
            )?;
            counter(
                &mut e,
                "l2_failures",
                "L2 calls that failed or timed out",
                read(&c.failures),
            )?;
            gauge(
                &mut e,
                "l2_breaker_open",
                "1 while the breaker keeps calls away from a failing Redis",
                u64::from(l2.breaker().is_open()),
            )?;
        }
        if let Some(bus) = cache.bus() {
            let c = bus.counters();
            counter(
                &mut e,
                "bus_published",
                "Messages this instance published (heartbeats included)",
                read(&c.published),
            )?;
            counter(
                &mut e,
                "bus_invalidations_applied",
                "Invalidations from other instances applied to L1",
                read(&c.applied),
            )?;
            counter(
                &mut e,
                "bus_gaps",
                "Sequence gaps seen (messages lost): each cleared L1",
                read(&c.gaps),
            )?;
            counter(
                &mut e,
                "bus_distrusted",
                "Times this instance stopped trusting its caches",
                read(&c.distrusted),
            )?;
            let delay = e.encode_descriptor(
                "cache_invalidation_delay_seconds",
                "From another instance publishing committed changes (its clock) to this one \
                 applying them to L1",
                None,
                c.delay.metric_type(),
            )?;
            c.delay.encode(delay)?;
            gauge(
                &mut e,
                "bus_trusted",
                "1 while the bus is whole and the caches are served",
                u64::from(bus.trusted()),
            )?;
        }
        Ok(())
    }
}
