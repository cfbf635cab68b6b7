//! The tokio runtime's own figures (its stable metrics), read at each scrape: workers, tasks
//! alive, the global queue, and per worker the time busy and the times parked — the Rust
//! counterpart of the seed's goroutine counts, and what shows a blocked or saturated worker.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

#[derive(Debug)]
pub struct Runtime(pub tokio::runtime::Handle);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Worker {
    worker: u32,
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: usize,
) -> Result<(), std::fmt::Error> {
    let gauge = ConstGauge::new(value as i64);
    gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
}

impl Collector for Runtime {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let metrics = self.0.metrics();
        let workers = metrics.num_workers();
        gauge(
            &mut encoder,
            "tokio_workers",
            "Worker threads of the runtime",
            workers,
        )?;
        gauge(
            &mut encoder,
            "tokio_alive_tasks",
            "Tasks alive (spawned and not finished): grows with connections and requests",
            metrics.num_alive_tasks(),
        )?;
        gauge(
            &mut encoder,
            "tokio_global_queue_depth",
            "Tasks waiting in the runtime's global queue",
            metrics.global_queue_depth(),
        )?;
        let mut busy = encoder.encode_descriptor(
            "tokio_worker_busy_seconds",
            "Time each worker spent running tasks",
            None,
            MetricType::Counter,
        )?;
        for worker in 0..workers {
            let seconds = metrics.worker_total_busy_duration(worker).as_secs_f64();
            let labels = Worker {
                worker: worker as u32,
            };
            ConstCounter::new(seconds).encode(busy.encode_family(&labels)?)?;
        }
        let mut parks = encoder.encode_descriptor(
            "tokio_worker_parks",
            "Times each worker went to sleep for lack of work",
            None,
            MetricType::Counter,
        )?;
        for worker in 0..workers {
            let labels = Worker {
                worker: worker as u32,
            };
            ConstCounter::new(metrics.worker_park_count(worker))
                .encode(parks.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
