//! Measurements: per-second HDR histograms filled by the connection tasks (each keeps its own
//! and merges it once per second, so recording costs no lock), the live progress line, the
//! final summary, the JSON report and the SVG plot.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;

/// Latencies are recorded in microseconds, from 1 µs to 100 s, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("static histogram bounds are valid")
}

/// What happened during one second of the run.
pub struct Second {
    pub latency: Histogram<u64>,
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    pub cache_hits: u64,
}

impl Second {
    fn new() -> Second {
        Second {
            latency: new_histogram(),
            ok: 0,
            errors: BTreeMap::new(),
            cache_hits: 0,
        }
    }

    fn merge(&mut self, other: &Second) {
        let _ = self.latency.add(&other.latency);
        self.ok += other.ok;
        self.cache_hits += other.cache_hits;
        for (kind, n) in &other.errors {
            *self.errors.entry(kind.clone()).or_default() += n;
        }
    }
}

/// Shared between the tasks of a run: one slot per elapsed second.
#[derive(Clone, Default)]
pub struct Recorder {
    seconds: Arc<Mutex<Vec<Second>>>,
}

/// A task's private recorder for the current second.
pub struct LocalRecorder {
    shared: Recorder,
    second: usize,
    current: Second,
}

impl Recorder {
    pub fn local(&self) -> LocalRecorder {
        LocalRecorder {
            shared: self.clone(),
            second: 0,
            current: Second::new(),
        }
    }

    /// Totals of second `index` (if any task reported it yet).
    fn with_second<T>(&self, index: usize, f: impl FnOnce(&Second) -> T) -> Option<T> {
        self.seconds.lock().get(index).map(f)
    }

    /// Merges all seconds into the final summary.
    pub fn summary(&self, elapsed: Duration, setup: serde_json::Value) -> Summary {
        let seconds = self.seconds.lock();
        let mut total = Second::new();
        let mut per_second = Vec::with_capacity(seconds.len());
        for (index, second) in seconds.iter().enumerate() {
            total.merge(second);
            per_second.push(SecondReport {
                t: index as u64,
                rps: second.ok + second.errors.values().sum::<u64>(),
                errors: second.errors.values().sum(),
                p50_us: second.latency.value_at_quantile(0.5),
                p99_us: second.latency.value_at_quantile(0.99),
            });
        }
        let requests = total.ok + total.errors.values().sum::<u64>();
        let latency = &total.latency;
        Summary {
            setup,
            elapsed_s: elapsed.as_secs_f64(),
            requests,
            ok: total.ok,
            errors: total.errors.clone(),
            cache_hit_ratio: if total.ok > 0 {
                total.cache_hits as f64 / total.ok as f64
            } else {
                0.0
            },
            throughput_rps: requests as f64 / elapsed.as_secs_f64().max(1e-9),
            latency_us: Latency {
                p50: latency.value_at_quantile(0.50),
                p90: latency.value_at_quantile(0.90),
                p99: latency.value_at_quantile(0.99),
                p999: latency.value_at_quantile(0.999),
                max: latency.max(),
                mean: latency.mean(),
            },
            per_second,
        }
    }
}

impl LocalRecorder {
    /// Records one response `latency` after its planned (open loop) or actual send time,
    /// during second `second` of the run.
    pub fn record(
        &mut self,
        second: usize,
        latency: Duration,
        error: Option<String>,
        cache_hit: bool,
    ) {
        if second != self.second {
            self.flush();
            self.second = second;
        }
        let micros = (latency.as_micros() as u64).clamp(1, 100_000_000);
        let _ = self.current.latency.record(micros);
        match error {
            None => {
                self.current.ok += 1;
                self.current.cache_hits += u64::from(cache_hit);
            }
            Some(kind) => *self.current.errors.entry(kind).or_default() += 1,
        }
    }

    /// Merges what this task recorded into the shared per-second totals.
    pub fn flush(&mut self) {
        let mut seconds = self.shared.seconds.lock();
        while seconds.len() <= self.second {
            seconds.push(Second::new());
        }
        seconds[self.second].merge(&self.current);
        self.current = Second::new();
    }
}

impl Drop for LocalRecorder {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Prints `[  3s]  123,456 req/s  p99 1.23 ms  errors 0` once per second, for the second
/// that ended half a second earlier (tasks merge a second when they record into the next).
pub async fn progress(recorder: Recorder, seconds: u64) {
    let first = tokio::time::Instant::now() + Duration::from_millis(1500);
    let mut tick = tokio::time::interval_at(first, Duration::from_secs(1));
    for elapsed in 1..=seconds {
        tick.tick().await;
        let line = recorder.with_second(elapsed as usize - 1, |s| {
            let errors: u64 = s.errors.values().sum();
            format!(
                "[{elapsed:>4}s] {:>10} req/s   p99 {:>9}   errors {errors}",
                s.ok + errors,
                format_us(s.latency.value_at_quantile(0.99))
            )
        });
        if let Some(line) = line {
            eprintln!("{line}");
        }
    }
}

pub fn format_us(us: u64) -> String {
    if us >= 1_000_000 {
        format!("{:.2} s", us as f64 / 1e6)
    } else if us >= 1000 {
        format!("{:.2} ms", us as f64 / 1e3)
    } else {
        format!("{us} µs")
    }
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

#[derive(Debug, Serialize)]
pub struct SecondReport {
    pub t: u64,
    pub rps: u64,
    pub errors: u64,
    pub p50_us: u64,
    pub p99_us: u64,
}

/// The result of a run, as printed and as written to the JSON report.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// The run's parameters (target, workload, model, …).
    pub setup: serde_json::Value,
    pub elapsed_s: f64,
    pub requests: u64,
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    /// Share of successful responses the server said came from its L1 (HTTP `X-Cache`,
    /// TCP tier byte; always 1 for Redis).
    pub cache_hit_ratio: f64,
    pub throughput_rps: f64,
    pub latency_us: Latency,
    pub per_second: Vec<SecondReport>,
}

impl Summary {
    /// A human-readable block.
    pub fn print(&self) {
        let l = &self.latency_us;
        println!(
            "requests   {} in {:.1} s: {:.0} req/s",
            self.requests, self.elapsed_s, self.throughput_rps
        );
        println!(
            "latency    p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            format_us(l.p50),
            format_us(l.p90),
            format_us(l.p99),
            format_us(l.p999),
            format_us(l.max)
        );
        if self.errors.is_empty() {
            println!("errors     none");
        } else {
            let kinds: Vec<String> = self
                .errors
                .iter()
                .map(|(k, n)| format!("{k}: {n}"))
                .collect();
            println!("errors     {}", kinds.join(", "));
        }
        println!("cache hits {:.1} %", self.cache_hit_ratio * 100.0);
    }

    /// Throughput and p99 latency per second as an SVG line chart.
    pub fn write_svg(&self, path: &std::path::Path) -> Result<(), String> {
        use plotters::prelude::*;
        let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let (top, bottom) = root.split_vertically(280);
        let last = self.per_second.len().max(2) as u64;
        let max_rps = self
            .per_second
            .iter()
            .map(|s| s.rps)
            .max()
            .unwrap_or(1)
            .max(1) as f64
            * 1.1;
        let max_p99 = self
            .per_second
            .iter()
            .map(|s| s.p99_us)
            .max()
            .unwrap_or(1)
            .max(1) as f64
            / 1000.0
            * 1.1;
        let throughput = self.per_second.iter().map(|s| (s.t, s.rps as f64));
        line_chart(&top, "throughput (req/s)", last, max_rps, throughput, &BLUE)?;
        let p99 = self
            .per_second
            .iter()
            .map(|s| (s.t, s.p99_us as f64 / 1000.0));
        line_chart(&bottom, "p99 latency (ms)", last, max_p99, p99, &RED)?;
        root.present().map_err(|e| e.to_string())
    }
}

/// One line over seconds `0..last`, values `0..max`, in `area`.
fn line_chart<DB: plotters::prelude::DrawingBackend>(
    area: &plotters::prelude::DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    last: u64,
    max: f64,
    points: impl Iterator<Item = (u64, f64)>,
    color: &plotters::style::RGBColor,
) -> Result<(), String> {
    use plotters::prelude::*;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0u64..last, 0f64..max)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .light_line_style(TRANSPARENT)
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(LineSeries::new(points, color))
        .map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_recorders_merge_by_second() {
        let recorder = Recorder::default();
        let mut a = recorder.local();
        let mut b = recorder.local();
        for _ in 0..90 {
            a.record(0, Duration::from_micros(100), None, true);
        }
        b.record(0, Duration::from_millis(50), Some("http_503".into()), false);
        b.record(1, Duration::from_micros(200), None, false);
        drop((a, b));
        let summary = recorder.summary(Duration::from_secs(2), serde_json::json!({}));
        assert_eq!((summary.requests, summary.ok), (92, 91));
        assert_eq!(summary.errors.get("http_503"), Some(&1));
        assert_eq!(summary.per_second.len(), 2);
        assert_eq!(summary.per_second[0].rps, 91);
        assert!(summary.latency_us.max >= 49_000);
        assert!((summary.cache_hit_ratio - 90.0 / 91.0).abs() < 1e-9);
    }
}
