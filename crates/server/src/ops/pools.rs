//! The stores' connection pools, read at each scrape: connections in use (the seed's
//! `pool_active_workers`), idle, the maximum, and tasks waiting for one — what shows a pool
//! too small for the load or a database that holds connections too long.

use std::sync::Arc;

use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::store::{PoolStatus, PoolWatch};

/// The pools watched, by store name (its URL without credentials).
#[derive(Debug, Clone, Default)]
pub struct Pools(Arc<Mutex<Vec<(String, PoolWatch)>>>);

impl Pools {
    pub fn watch(&self, name: String, pool: PoolWatch) {
        self.0.lock().push((name, pool));
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolName {
    pool_name: String,
}

impl Collector for Pools {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut pools = self.0.lock();
        // Pools of a service that is gone (a stopped server in tests) are forgotten.
        let mut rows = Vec::with_capacity(pools.len());
        pools.retain(|(name, watch)| match watch.status() {
            Some(status) => {
                rows.push((name.clone(), status));
                true
            }
            None => false,
        });
        drop(pools);
        type Read = fn(PoolStatus) -> usize;
        let families: [(&str, &str, Read); 4] = [
            (
                "pool_active_workers",
                "Store connections in use, by pool (the store's URL without credentials)",
                |s| s.open.saturating_sub(s.idle),
            ),
            (
                "store_pool_idle_connections",
                "Store connections open and idle",
                |s| s.idle,
            ),
            (
                "store_pool_max_connections",
                "Most connections the pool opens (store.max_connections)",
                |s| s.max,
            ),
            (
                "store_pool_waiting",
                "Requests waiting for a store connection",
                |s| s.waiting,
            ),
        ];
        for (name, help, value) in families {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (pool_name, status) in &rows {
                let labels = PoolName {
                    pool_name: pool_name.clone(),
                };
                ConstGauge::new(value(*status) as i64).encode(family.encode_family(&labels)?)?;
            }
        }
        type Total = fn(&PoolStatus) -> f64;
        let counters: [(&str, &str, Total); 2] = [
            (
                "store_pool_leases",
                "Store connections taken from the pool (attempts that gave up included)",
                |s| s.leases as f64,
            ),
            (
                "store_pool_wait_seconds",
                "Time spent waiting for store connections (opening them included); divided by \
                 store_pool_leases_total: the mean wait",
                |s| s.wait_seconds,
            ),
        ];
        for (name, help, total) in counters {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (pool_name, status) in &rows {
                let labels = PoolName {
                    pool_name: pool_name.clone(),
                };
                ConstCounter::new(total(status)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
