//! One TCP connection: handshake, frame decoding, dispatch, the in-flight window, output with
//! back-pressure, heartbeats, and draining on shutdown.
//!
//! One task owns the socket. Cache hits are answered inline (encoded straight into the output
//! buffer); everything else runs in its own task, which encodes its response into the shared
//! [`Outbox`] and wakes the connection task. Buffers are allocated when bytes arrive and freed
//! as soon as they are drained, so an idle connection holds no buffer at all.

use std::io::ErrorKind;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use atomic_waker::AtomicWaker;

use bytes::{Buf, BytesMut};
use datamiddleware_protocol::message::{encode_doc_frame, get_fields};
use datamiddleware_protocol::{
    Credential, ErrorCode, FrameError, HEADER_LEN, Header, HelloOk, Message, Opcode,
    PRE_HANDSHAKE_MAX_BODY, Tier, VERSION, check, decode,
};
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{TcpContext, dispatch};
use crate::ingress::CLOSE_FLUSH;
use crate::ingress::drain::{self, Drain};

/// Bytes reserved for reading when a read finds no room.
const READ_CHUNK: usize = 4096;
/// PINGs answered per heartbeat tick; more are ignored (a flood costs nothing but reading).
const MAX_PINGS_PER_TICK: u32 = 16;

/// Responses finished by request tasks, waiting for the connection task to write them.
///
/// The wake-up is a flag plus an [`AtomicWaker`] rather than a `tokio::sync::Notify`: the
/// connection task polls it on every turn of its loop, and a `Notify` waiter takes a mutex to
/// register and another to deregister each time (~2 % of the server's CPU at depth 1 in
/// `perf`), where re-registering the same waker here is one atomic exchange.
#[derive(Default)]
struct Outbox {
    frames: Mutex<BytesMut>,
    /// Requests dispatched to tasks and not answered yet.
    in_flight: AtomicUsize,
    pushed: AtomicBool,
    waker: AtomicWaker,
}

impl Outbox {
    fn push(&self, request_id: u32, response: &Message) {
        response.encode(request_id, &mut self.frames.lock());
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.pushed.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Ready with [`Wake::Drain`] once the drain's phase is past `seen`, or with
    /// [`Wake::Pushed`] once something was pushed since the last time.
    fn poll_wake(&self, cx: &mut Context<'_>, drain: &Drain, seen: drain::Phase) -> Poll<Wake> {
        // Registers the waker before looking, so a push between the two is not missed either.
        if let Some(phase) = drain.poll_past(&self.waker, cx, seen) {
            Poll::Ready(Wake::Drain(phase))
        } else if self.pushed.swap(false, Ordering::AcqRel) {
            Poll::Ready(Wake::Pushed)
        } else {
            Poll::Pending
        }
    }
}

impl drain::Wakes for Outbox {
    fn waker(&self) -> &AtomicWaker {
        &self.waker
    }
}

enum Wake {
    Pushed,
    Drain(drain::Phase),
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for HELLO.
    Handshake,
    Ready,
    /// GOAWAY sent: no more requests are read; in-flight ones finish.
    Draining,
    /// An error frame is queued: flush it and close.
    Closing,
}

struct Conn<'a> {
    stream: TcpStream,
    ctx: &'a TcpContext,
    read_buf: BytesMut,
    out: BytesMut,
    outbox: Arc<Outbox>,
    phase: Phase,
    last_recv: Instant,
    last_write_progress: Instant,
    last_ping_sent: Instant,
    highest_request_id: u32,
    pings_this_tick: u32,
    /// Reads since the last tick. A busy connection keeps its buffers between requests
    /// (allocating and freeing both per request was ~350 instructions of ~5,000 at depth 1);
    /// a quiet one frees them as soon as they drain.
    reads_this_tick: u32,
}

/// Reads within one tick from which a connection counts as busy and keeps its buffers.
const BUSY_READS: u32 = 8;

/// Why a connection ended (for the debug log).
enum End {
    PeerClosed,
    Io(std::io::Error),
    Stalled,
    Finished,
    /// The shutdown grace period ended with requests still in flight.
    GraceOver,
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::PeerClosed => f.write_str("closed by the peer"),
            End::Io(e) => write!(f, "I/O error: {e}"),
            End::Stalled => f.write_str("the peer does not read its responses"),
            End::Finished => f.write_str("closed by the server"),
            End::GraceOver => f.write_str("closed at the end of the shutdown grace period"),
        }
    }
}

/// Serves one connection until it closes.
pub(super) async fn serve(stream: TcpStream, ctx: &TcpContext, drain: &Drain) {
    let now = Instant::now();
    let mut conn = Conn {
        stream,
        ctx,
        read_buf: BytesMut::new(),
        out: BytesMut::new(),
        outbox: Arc::new(Outbox::default()),
        phase: Phase::Handshake,
        last_recv: now,
        last_write_progress: now,
        last_ping_sent: now,
        highest_request_id: 0,
        pings_this_tick: 0,
        reads_this_tick: 0,
    };
    let _registration = drain.register(conn.outbox.clone());
    let mut drain_seen = drain::Phase::Serving;
    let timer = tokio::time::sleep_until(now + ctx.config.handshake_timeout);
    tokio::pin!(timer);
    let end = loop {
        if let Err(end) = conn.step() {
            break end;
        }
        if conn.finished() {
            break End::Finished;
        }
        let can_read = conn.may_read();
        let wants_write = !conn.out.is_empty();
        tokio::select! {
            ready = conn.stream.readable(), if can_read => {
                if let Err(e) = ready {
                    break End::Io(e);
                }
                if let Err(end) = conn.read() {
                    break end;
                }
            }
            ready = conn.stream.writable(), if wants_write => {
                if let Err(e) = ready {
                    break End::Io(e);
                }
            }
            wake = std::future::poll_fn(|cx| conn.outbox.poll_wake(cx, drain, drain_seen)) => {
                if let Wake::Drain(phase) = wake {
                    drain_seen = phase;
                    conn.go_away();
                    if phase == drain::Phase::Closing {
                        break End::GraceOver;
                    }
                }
            }
            () = &mut timer => {
                if let Err(end) = conn.tick() {
                    break end;
                }
                let period = conn.tick_period();
                timer.as_mut().reset(Instant::now() + period);
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_FLUSH, conn.flush_all()).await;
    tracing::debug!(%end, "TCP connection closed");
}

impl Conn<'_> {
    /// Moves finished responses into the output, decodes buffered frames the window allows,
    /// and writes what the socket takes without blocking.
    fn step(&mut self) -> Result<(), End> {
        {
            let mut frames = self.outbox.frames.lock();
            if !frames.is_empty() {
                self.out.extend_from_slice(&frames);
                *frames = BytesMut::new();
            }
        }
        self.process_buffered();
        self.try_write()
    }

    fn finished(&self) -> bool {
        let idle = self.out.is_empty() && self.outbox.in_flight.load(Ordering::Acquire) == 0;
        match self.phase {
            Phase::Closing => self.out.is_empty(),
            Phase::Draining => idle,
            _ => false,
        }
    }

    fn window_full(&self) -> bool {
        self.outbox.in_flight.load(Ordering::Acquire) >= self.ctx.config.max_in_flight as usize
    }

    /// Reading stops while the in-flight window is full or too much output is pending
    /// (back-pressure), and for good once the connection drains or closes.
    fn may_read(&self) -> bool {
        matches!(self.phase, Phase::Handshake | Phase::Ready)
            && !self.window_full()
            && self.out.len() < self.ctx.config.max_output_bytes
    }

    fn read(&mut self) -> Result<(), End> {
        if self.read_buf.capacity() - self.read_buf.len() < READ_CHUNK / 4 {
            self.read_buf.reserve(READ_CHUNK);
        }
        match self.stream.try_read_buf(&mut self.read_buf) {
            Ok(0) => return Err(End::PeerClosed),
            Ok(_) => {
                self.last_recv = Instant::now();
                self.reads_this_tick = self.reads_this_tick.saturating_add(1);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(End::Io(e)),
        }
        // What arrived is decoded by the next `step`, which runs before the task waits again.
        Ok(())
    }

    fn process_buffered(&mut self) {
        while matches!(self.phase, Phase::Handshake | Phase::Ready) && !self.read_buf.is_empty() {
            if self.phase == Phase::Ready && self.window_full() {
                break; // resumes when responses have gone out
            }
            let max_body = match self.phase {
                Phase::Handshake => PRE_HANDSHAKE_MAX_BODY,
                _ => self.ctx.config.max_frame_bytes,
            };
            if self.phase == Phase::Ready && self.answer_cached_get(max_body) {
                continue;
            }
            match decode(&mut self.read_buf, max_body) {
                Ok(Some((header, message))) => self.on_frame(header, message),
                Ok(None) => break,
                Err(e) => self.violation(0, &e),
            }
        }
    }

    /// Quiet connections hold no buffer: empty ones are freed unless the connection is busy
    /// (BUSY_READS reads since the last tick, which resets the count).
    fn release_empty_buffers(&mut self) {
        if self.reads_this_tick >= BUSY_READS {
            return;
        }
        if self.read_buf.is_empty() && self.read_buf.capacity() > 0 {
            self.read_buf = BytesMut::new();
        }
        if self.out.is_empty() && self.out.capacity() > 0 {
            self.out = BytesMut::new();
        }
    }

    /// The hot path: a GET that L1 can answer (the document, or an error such as a cached
    /// "missing") is answered from the buffered frame's borrowed fields, allocating nothing.
    /// Anything else (another opcode, a miss, a malformed body) returns false and goes
    /// through the full decoder; a GET arriving there is a miss and runs in a task.
    fn answer_cached_get(&mut self, max_body: u32) -> bool {
        let Ok(Some(header)) = check(&self.read_buf, max_body) else {
            return false;
        };
        if header.opcode != Opcode::Get {
            return false;
        }
        let body = &self.read_buf[HEADER_LEN..header.frame_len()];
        let Some((game, collection, id)) = get_fields(body) else {
            return false;
        };
        match self.ctx.service.get_cached(game, collection, id) {
            Some(Ok(read)) => encode_doc_frame(
                &mut self.out,
                header.request_id,
                Tier::L1,
                read.version,
                &read.body,
            ),
            // Unknown game, bad id, or a cached "missing": answered without the store too.
            Some(Err(e)) => dispatch::error_message(&e).encode(header.request_id, &mut self.out),
            None => return false,
        }
        self.highest_request_id = self.highest_request_id.max(header.request_id);
        self.read_buf.advance(header.frame_len());
        true
    }

    fn on_frame(&mut self, header: Header, message: Message) {
        let id = header.request_id;
        self.highest_request_id = self.highest_request_id.max(id);
        match (&self.phase, message) {
            (_, Message::Ping(payload)) => {
                self.pings_this_tick += 1;
                if self.pings_this_tick <= MAX_PINGS_PER_TICK {
                    Message::Pong(payload).encode(id, &mut self.out);
                }
            }
            (_, Message::Pong(_)) => {}
            (Phase::Handshake, Message::Hello(hello)) => {
                self.handshake(id, hello.version, &hello.client_name, &hello.credential)
            }
            (Phase::Handshake, _) => self.close_with(
                id,
                ErrorCode::ProtocolError,
                "the first frame must be HELLO",
            ),
            (_, Message::Hello(_)) => {
                self.close_with(id, ErrorCode::ProtocolError, "HELLO was already received")
            }
            (_, message) if is_request(&message) => self.spawn(id, message),
            (_, message) => {
                let detail = format!("{:?} is not sent by clients", message.opcode());
                self.close_with(id, ErrorCode::UnknownOpcode, &detail);
            }
        }
    }

    fn handshake(&mut self, id: u32, version: u8, client_name: &str, credential: &Credential) {
        if version < VERSION {
            let detail = format!("this server speaks protocol version {VERSION}");
            return self.close_with(id, ErrorCode::UnsupportedVersion, &detail);
        }
        match self.ctx.auth.authenticate(client_name, credential) {
            Ok(principal) => {
                tracing::debug!(client = %principal.name, "TCP handshake complete");
                let config = &self.ctx.config;
                Message::HelloOk(HelloOk {
                    version: VERSION,
                    heartbeat_interval_ms: config
                        .heartbeat_interval
                        .as_millis()
                        .min(u32::MAX as u128) as u32,
                    max_frame: config.max_frame_bytes,
                    max_in_flight: config.max_in_flight,
                    server: concat!("datamiddleware/", env!("CARGO_PKG_VERSION")).to_string(),
                })
                .encode(id, &mut self.out);
                self.phase = Phase::Ready;
            }
            Err(e) => self.close_with(id, e.code, &e.message),
        }
    }

    fn spawn(&mut self, id: u32, message: Message) {
        self.outbox.in_flight.fetch_add(1, Ordering::AcqRel);
        let outbox = self.outbox.clone();
        let service = self.ctx.service.clone();
        tokio::spawn(async move {
            let response = dispatch::handle(&service, message).await;
            outbox.push(id, &response);
        });
    }

    fn violation(&mut self, id: u32, e: &FrameError) {
        self.close_with(id, e.code(), &e.to_string());
    }

    /// Queues an error frame and closes once it is written.
    fn close_with(&mut self, id: u32, code: ErrorCode, message: &str) {
        Message::Error {
            code: code.as_str().to_string(),
            message: message.to_string(),
            op_index: None,
        }
        .encode(id, &mut self.out);
        self.phase = Phase::Closing;
        self.read_buf = BytesMut::new();
    }

    fn go_away(&mut self) {
        if matches!(self.phase, Phase::Handshake | Phase::Ready) {
            Message::GoAway {
                last_request_id: self.highest_request_id,
                message: "server shutting down: finish in-flight requests and reconnect elsewhere"
                    .into(),
            }
            .encode(0, &mut self.out);
            self.phase = Phase::Draining;
        }
    }

    /// Periodic checks: handshake deadline, heartbeats, stalled output, ping budget.
    fn tick(&mut self) -> Result<(), End> {
        let now = Instant::now();
        let config = &self.ctx.config;
        self.pings_this_tick = 0;
        self.reads_this_tick = 0;
        // A connection that went quiet gives back what its busy period kept.
        self.release_empty_buffers();
        if self.phase == Phase::Handshake {
            self.close_with(
                0,
                ErrorCode::Timeout,
                "no HELLO within the handshake timeout",
            );
            return Ok(());
        }
        if !self.out.is_empty() && now - self.last_write_progress >= config.write_timeout {
            return Err(End::Stalled);
        }
        let silent = now - self.last_recv;
        if silent >= config.heartbeat_timeout {
            self.close_with(0, ErrorCode::Timeout, "heartbeat timeout: nothing received");
        } else if silent >= config.heartbeat_interval
            && now - self.last_ping_sent >= config.heartbeat_interval
            && self.phase == Phase::Ready
        {
            Message::Ping(0).encode(0, &mut self.out);
            self.last_ping_sent = now;
        }
        Ok(())
    }

    fn tick_period(&self) -> Duration {
        let config = &self.ctx.config;
        (config.heartbeat_interval.min(config.write_timeout) / 2).max(Duration::from_millis(10))
    }

    fn try_write(&mut self) -> Result<(), End> {
        while !self.out.is_empty() {
            match self.stream.try_write(&self.out) {
                Ok(0) => return Err(End::PeerClosed),
                Ok(n) => {
                    self.out.advance(n);
                    self.last_write_progress = Instant::now();
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(End::Io(e)),
            }
        }
        self.release_empty_buffers();
        Ok(())
    }

    /// Best-effort flush of the last frames before closing.
    async fn flush_all(&mut self) {
        while !self.out.is_empty() {
            if self.stream.writable().await.is_err() || self.try_write().is_err() {
                return;
            }
        }
    }
}

fn is_request(message: &Message) -> bool {
    matches!(
        message,
        Message::Get(_)
            | Message::BatchGet { .. }
            | Message::Put { .. }
            | Message::Patch { .. }
            | Message::Delete { .. }
            | Message::List { .. }
            | Message::Incr { .. }
            | Message::Txn { .. }
    )
}
