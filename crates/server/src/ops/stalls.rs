//! Stall and task-leak detection, the seed's goroutine-leak monitor for tokio: a thread of its
//! own (a blocked runtime cannot block it) samples the runtime every second and warns, with
//! numbers, when a worker has run without a break past `threshold` (a blocking call inside a
//! task, or a worker saturated for that long) or when the tasks alive grew by half again and by
//! more than a thousand over a minute without falling back. Both are also counters
//! (`tokio_worker_stalls_total`, `tokio_task_growth_warnings_total`).

use std::sync::Weak;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;

/// How often the runtime is sampled.
pub const EVERY: Duration = Duration::from_secs(1);
/// Samples of alive tasks compared for growth (one minute).
const GROWTH_WINDOW: usize = 60;

/// The counters the watchdog adds to.
#[derive(Debug, Clone, Default)]
pub struct StallCounters {
    pub worker_stalls: Counter,
    pub task_growth: Counter,
}

/// One worker's state at the last sample.
#[derive(Clone, Copy)]
struct Worker {
    /// tokio's park/unpark count: odd while parked, even while running. (Its busy time is
    /// only added up when the worker parks, so it cannot show a poll that never returns.)
    park_unpark: u64,
    /// How long it has run without parking.
    running: Duration,
    /// Set once a stall was reported, until the worker parks again.
    reported: bool,
}

/// Starts the watchdog thread; it ends when `alive` can no longer be upgraded (the server
/// stopped).
pub fn start<T: Send + Sync + 'static>(
    runtime: tokio::runtime::Handle,
    counters: StallCounters,
    threshold: Duration,
    alive: Weak<T>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("dmw-stalls".into())
        .spawn(move || watch(runtime, counters, threshold, alive))
        .map(drop)
}

fn watch<T>(
    runtime: tokio::runtime::Handle,
    counters: StallCounters,
    threshold: Duration,
    alive: Weak<T>,
) {
    let metrics = runtime.metrics();
    let mut workers: Vec<Worker> = (0..metrics.num_workers())
        .map(|i| Worker {
            park_unpark: metrics.worker_park_unpark_count(i),
            running: Duration::ZERO,
            reported: false,
        })
        .collect();
    let mut tasks = std::collections::VecDeque::with_capacity(GROWTH_WINDOW + 1);
    let mut last = std::time::Instant::now();
    loop {
        std::thread::sleep(EVERY);
        if alive.strong_count() == 0 {
            return;
        }
        let elapsed = last.elapsed();
        last = std::time::Instant::now();
        for (i, worker) in workers.iter_mut().enumerate() {
            let park_unpark = metrics.worker_park_unpark_count(i);
            // Running (an even count) and not parked once since the last sample.
            if park_unpark == worker.park_unpark && park_unpark.is_multiple_of(2) {
                worker.running += elapsed;
            } else {
                worker.running = Duration::ZERO;
                worker.reported = false;
            }
            worker.park_unpark = park_unpark;
            if worker.running >= threshold && !worker.reported {
                worker.reported = true;
                counters.worker_stalls.inc();
                tracing::warn!(
                    worker = i,
                    running_s = worker.running.as_secs_f64(),
                    threshold_s = threshold.as_secs_f64(),
                    "a runtime worker has run without a break past the threshold: a blocking \
                     call inside a task, or a saturated worker (see tokio_worker_busy_seconds)"
                );
            }
        }
        tasks.push_back(metrics.num_alive_tasks());
        if tasks.len() > GROWTH_WINDOW {
            tasks.pop_front();
        }
        if let Some(warning) = growth(&tasks) {
            counters.task_growth.inc();
            tracing::warn!(
                from = warning.0,
                to = warning.1,
                window_s = GROWTH_WINDOW,
                "tasks alive keep growing: a leak, or load still rising (see tokio_alive_tasks)"
            );
            tasks.clear();
        }
    }
}

/// `(first, last)` when the window is full, never fell below its first sample, and its last
/// is half again above the first and more than 1,000 above it.
fn growth(tasks: &std::collections::VecDeque<usize>) -> Option<(usize, usize)> {
    if tasks.len() < GROWTH_WINDOW {
        return None;
    }
    let (first, last) = (*tasks.front()?, *tasks.back()?);
    let never_fell = tasks.iter().all(|n| *n >= first);
    (never_fell && last > first + 1_000 && last * 2 > first * 3).then_some((first, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_needs_a_full_window_a_steady_climb_and_a_large_step() {
        let window = |f: &dyn Fn(usize) -> usize| -> std::collections::VecDeque<usize> {
            (0..GROWTH_WINDOW).map(f).collect()
        };
        assert_eq!(growth(&window(&|i| 1_000 + i * 100)), Some((1_000, 6_900)));
        assert_eq!(growth(&window(&|i| 100 + i)), None, "small");
        assert_eq!(
            growth(&window(&|i| 10_000 + i * 20)),
            None,
            "not half again"
        );
        let dip = window(&|i| if i == 30 { 500 } else { 1_000 + i * 100 });
        assert_eq!(growth(&dip), None, "fell back below the start");
        let short: std::collections::VecDeque<usize> = (0..10).map(|i| i * 10_000).collect();
        assert_eq!(growth(&short), None, "window not full");
    }
}
