//! The load itself: one task per connection keeping up to `depth` requests in flight, in a
//! closed loop (send as soon as a slot frees) or an open loop (send at planned times at a
//! constant or stepped rate; latency counts from the *planned* time, so a stalled server
//! cannot hide its stall by slowing the generator down — no coordinated omission).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use datamiddleware_protocol::{Credential, Hello, Message, decode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::tls::{Stream, Tls};
use tokio::time::Instant;

use crate::codec::{Codec, HttpApi, Op, PlainHttp, Redis, TcpProtocol, value_json};
use crate::report::Recorder;

/// The credential a run presents.
#[derive(Debug, Clone)]
pub enum Auth {
    ApiKey(String),
    Bearer(String),
}

/// What to connect to.
#[derive(Debug, Clone)]
pub enum Target {
    /// Our HTTP API.
    Http {
        addr: SocketAddr,
        game: String,
        collection: String,
        auth: Option<Auth>,
    },
    /// Our TCP protocol.
    Tcp {
        addr: SocketAddr,
        game: String,
        collection: String,
        auth: Option<Auth>,
    },
    /// Redis (RESP).
    Redis { addr: SocketAddr },
    /// Any HTTP server: GET of one path.
    Url { addr: SocketAddr, path: String },
}

impl Target {
    pub fn addr(&self) -> SocketAddr {
        match self {
            Target::Http { addr, .. }
            | Target::Tcp { addr, .. }
            | Target::Redis { addr }
            | Target::Url { addr, .. } => *addr,
        }
    }

    /// Whether keys must be written before reading them.
    pub fn needs_load(&self) -> bool {
        !matches!(self, Target::Url { .. })
    }

    fn codec(&self, value_size: usize) -> Box<dyn Codec> {
        let value = value_json(value_size);
        match self {
            Target::Http {
                game,
                collection,
                auth,
                ..
            } => Box::new(HttpApi {
                game: game.clone(),
                collection: collection.clone(),
                value,
                extra_headers: match auth {
                    Some(Auth::ApiKey(key)) => format!("X-Api-Key: {key}\r\n"),
                    Some(Auth::Bearer(token)) => format!("Authorization: Bearer {token}\r\n"),
                    None => String::new(),
                },
            }),
            Target::Tcp {
                game, collection, ..
            } => Box::new(TcpProtocol {
                game: game.clone(),
                collection: collection.clone(),
                value: bytes::Bytes::from(value),
                scratch: BytesMut::new(),
            }),
            Target::Redis { .. } => Box::new(Redis { value }),
            Target::Url { path, .. } => Box::new(PlainHttp { path: path.clone() }),
        }
    }
}

/// Which operations a run sends.
#[derive(Debug, Clone)]
pub enum Workload {
    /// GET of loaded keys (cache hits once warm; use a key set larger than the server's L1
    /// for the database path).
    Get,
    /// GETs and PUTs, `write_ratio` of them PUTs.
    Mixed { write_ratio: f64 },
    /// Batch GETs of `size` keys.
    Batch { size: usize },
    /// Increments (hot counters when the key set is small).
    Incr,
}

/// How requests are paced.
#[derive(Debug, Clone)]
pub enum Model {
    Closed,
    /// Open loop: `(total requests per second, how long)` steps, run in order.
    Open {
        steps: Vec<(f64, Duration)>,
    },
}

/// Key choice: uniform over `count` keys, or Zipf-distributed (hot keys first).
#[derive(Clone)]
pub struct Keys {
    pub count: u64,
    zipf_cdf: Option<Arc<Vec<f64>>>,
}

impl Keys {
    pub fn new(count: u64, zipf: Option<f64>) -> Keys {
        let zipf_cdf = zipf.map(|s| {
            let mut cdf = Vec::with_capacity(count as usize);
            let mut sum = 0.0;
            for rank in 1..=count {
                sum += 1.0 / (rank as f64).powf(s);
                cdf.push(sum);
            }
            cdf.iter_mut().for_each(|p| *p /= sum);
            Arc::new(cdf)
        });
        Keys {
            count: count.max(1),
            zipf_cdf,
        }
    }

    fn pick(&self, rng: &mut fastrand::Rng) -> u64 {
        match &self.zipf_cdf {
            Some(cdf) => {
                let u = rng.f64();
                cdf.partition_point(|p| *p < u).min(cdf.len() - 1) as u64
            }
            None => rng.u64(0..self.count),
        }
    }
}

/// Everything a run needs.
#[derive(Clone)]
pub struct Plan {
    pub target: Target,
    pub workload: Workload,
    pub model: Model,
    pub keys: Keys,
    pub value_size: usize,
    pub connections: usize,
    pub depth: usize,
    pub duration: Duration,
    /// Open loop: yield instead of sleeping until the next planned send (see `--spin`).
    pub spin: bool,
    /// Connect over TLS (`--tls-ca`).
    pub tls: Option<Tls>,
}

impl Plan {
    fn next_op(&self, rng: &mut fastrand::Rng) -> Op {
        match &self.workload {
            Workload::Get => Op::Get(self.keys.pick(rng)),
            Workload::Mixed { write_ratio } if rng.f64() < *write_ratio => {
                Op::Put(self.keys.pick(rng))
            }
            Workload::Mixed { .. } => Op::Get(self.keys.pick(rng)),
            Workload::Batch { size } => {
                Op::Batch((0..*size).map(|_| self.keys.pick(rng)).collect())
            }
            Workload::Incr => Op::Incr(self.keys.pick(rng)),
        }
    }

    /// Interval between one connection's sends at time `at` (open loop), or `None` after the
    /// last step.
    fn interval_at(&self, start: Instant, at: Instant) -> Option<Duration> {
        let Model::Open { steps } = &self.model else {
            return Some(Duration::ZERO);
        };
        let mut step_end = start;
        for (rate, length) in steps {
            step_end += *length;
            if at < step_end {
                return Some(Duration::from_secs_f64(
                    self.connections as f64 / rate.max(0.001),
                ));
            }
        }
        None
    }
}

/// Opens a connection: TCP without Nagle delay, TLS when the plan says so, and HELLO for our
/// TCP protocol.
pub async fn connect(plan: &Plan) -> Result<Stream, String> {
    let target = &plan.target;
    let tcp = TcpStream::connect(target.addr())
        .await
        .map_err(|e| format!("connect {}: {e}", target.addr()))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let stream = match &plan.tls {
        None => Stream::Plain(tcp),
        Some(tls) => tls.connect(tcp).await?,
    };
    handshake(stream, target).await
}

/// HELLO for our TCP protocol.
async fn handshake(mut stream: Stream, target: &Target) -> Result<Stream, String> {
    if let Target::Tcp { auth, .. } = target {
        let mut hello = BytesMut::new();
        Message::Hello(Hello {
            version: 1,
            client_name: "datamiddleware-bench".into(),
            credential: match auth {
                Some(Auth::ApiKey(key)) => Credential::ApiKey(key.clone()),
                Some(Auth::Bearer(token)) => Credential::Token(token.clone()),
                None => Credential::None,
            },
        })
        .encode(0, &mut hello);
        send(&mut stream, &hello).await?;
        let mut buf = BytesMut::new();
        loop {
            if stream.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
                return Err("the server closed during the handshake".into());
            }
            match decode(&mut buf, u32::MAX) {
                Ok(Some((_, Message::HelloOk(_)))) => break,
                Ok(Some((_, other))) => return Err(format!("handshake refused: {other:?}")),
                Ok(None) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    }
    Ok(stream)
}

/// Writes every key once (PUT / SET), from 16 connections with 8 requests in flight each.
pub async fn load(plan: &Plan) -> Result<(), String> {
    if !plan.target.needs_load() {
        return Ok(());
    }
    let connections = 16u64.min(plan.keys.count);
    let mut tasks = Vec::new();
    for c in 0..connections {
        let plan = plan.clone();
        tasks.push(tokio::spawn(async move {
            let keys: Vec<u64> = (c..plan.keys.count).step_by(connections as usize).collect();
            let mut stream = connect(&plan).await?;
            let mut codec = plan.target.codec(plan.value_size);
            let mut buf = BytesMut::new();
            // The TCP protocol wants request ids that increase on a connection.
            let mut next_id = 0u32;
            for chunk in keys.chunks(8) {
                let mut out = Vec::new();
                for key in chunk {
                    next_id += 1;
                    codec.encode(&Op::Put(*key), next_id, &mut out);
                }
                send(&mut stream, &out).await?;
                let mut answered = 0;
                while answered < chunk.len() {
                    match codec.parse(&buf)? {
                        Some(parsed) => {
                            let _ = buf.split_to(parsed.consumed);
                            if let Some(error) = parsed.error {
                                return Err(format!("loading failed: {error}"));
                            }
                            answered += 1;
                        }
                        None => {
                            if stream.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
                                return Err("the server closed while loading".into());
                            }
                        }
                    }
                }
            }
            Ok::<_, String>(())
        }));
    }
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// Runs one connection's share of the load until `start + plan.duration`.
pub async fn connection(
    index: usize,
    plan: Arc<Plan>,
    recorder: Recorder,
    start: Instant,
) -> Result<(), String> {
    let mut stream = connect(&plan).await?;
    let mut codec = plan.target.codec(plan.value_size);
    let in_order = codec.in_order();
    let mut rng = fastrand::Rng::with_seed(index as u64 * 7919 + 1);
    let mut local = recorder.local();
    let deadline = start + plan.duration;
    let mut ordered: VecDeque<Instant> = VecDeque::new();
    let mut by_id: HashMap<u32, Instant> = HashMap::new();
    let mut next_id: u32 = 1;
    let mut out = Vec::with_capacity(4096);
    let mut buf = BytesMut::with_capacity(16 * 1024);
    // Spread the connections' first planned sends over one interval.
    let first_gap = plan.interval_at(start, start).unwrap_or_default();
    let mut next_planned = start + first_gap.mul_f64(rng.f64());
    let mut schedule_done = false;
    // The last moment the pipeline was full. An open-loop request sent after its planned time
    // is timed from the plan if the pipeline was full since then (the server held it up),
    // and from the actual send otherwise (tokio's 1 ms timer woke us late: our lag, not the
    // server's).
    let mut last_full = start - Duration::from_secs(1);
    loop {
        let now = Instant::now();
        let in_flight = if in_order { ordered.len() } else { by_id.len() };
        if now >= deadline {
            if in_flight == 0 {
                break;
            }
        } else {
            let mut sending = in_flight;
            loop {
                if sending >= plan.depth {
                    last_full = now;
                    break;
                }
                let planned = match plan.model {
                    Model::Closed => now,
                    Model::Open { .. } if schedule_done || next_planned > now => break,
                    Model::Open { .. } if last_full >= next_planned => next_planned,
                    Model::Open { .. } => now,
                };
                let id = next_id;
                next_id = next_id.wrapping_add(1).max(1);
                codec.encode(&plan.next_op(&mut rng), id, &mut out);
                if in_order {
                    ordered.push_back(planned);
                } else {
                    by_id.insert(id, planned);
                }
                sending += 1;
                if let Model::Open { .. } = plan.model {
                    match plan.interval_at(start, next_planned) {
                        Some(gap) => next_planned += gap,
                        None => schedule_done = true,
                    }
                }
            }
        }
        if !out.is_empty() {
            send(&mut stream, &out).await?;
            out.clear();
        }
        let in_flight = if in_order { ordered.len() } else { by_id.len() };
        let wake = match plan.model {
            Model::Open { .. } if !schedule_done && in_flight < plan.depth => {
                next_planned.min(deadline)
            }
            _ => deadline + Duration::from_secs(2),
        };
        tokio::select! {
            read = stream.read_buf(&mut buf) => {
                match read {
                    Ok(0) => return Err("the server closed the connection".into()),
                    Ok(_) => {}
                    Err(e) => return Err(e.to_string()),
                }
                let done = Instant::now();
                if (if in_order { ordered.len() } else { by_id.len() }) >= plan.depth {
                    last_full = done;
                }
                while let Some(parsed) = codec.parse(&buf)? {
                    let _ = buf.split_to(parsed.consumed);
                    let sent = if in_order { ordered.pop_front() } else { parsed.id.and_then(|id| by_id.remove(&id)) };
                    let Some(sent) = sent else { continue };
                    if done <= deadline {
                        let second = (done - start).as_secs() as usize;
                        local.record(second, done - sent, parsed.error, parsed.cache_hit);
                    }
                }
            }
            () = pace(wake, plan.spin) => {
                if Instant::now() >= deadline + Duration::from_secs(2) {
                    break; // responses that never came are not waited for forever
                }
            }
        }
    }
    Ok(())
}

/// Writes `bytes` and flushes them (over TLS, records may wait in the session otherwise).
async fn send(stream: &mut Stream, bytes: &[u8]) -> Result<(), String> {
    stream.write_all(bytes).await.map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())
}

/// Waits until `wake`: on tokio's timer (1 ms granularity), or with `spin` by yielding to the
/// scheduler (which polls the sockets in between) when the wake-up is less than 2 ms away, so
/// that open-loop sends leave at their planned microsecond rather than in a burst per timer tick.
async fn pace(wake: Instant, spin: bool) {
    if spin && wake.saturating_duration_since(Instant::now()) < Duration::from_millis(2) {
        tokio::task::yield_now().await;
    } else {
        tokio::time::sleep_until(wake).await;
    }
}
