//! One TCP connection: handshake, frame decoding, request-id and order rules, dispatch, the
//! in-flight window, output with back-pressure, heartbeats, and finishing (GOAWAY, EOF, or a
//! protocol violation: requests already read are answered before the connection closes).
//!
//! One task owns the socket. Cache hits are answered inline (encoded straight into the output
//! buffer) when no earlier request touching the same document is still unanswered; everything
//! else runs in its own task, which waits for the earlier requests on its documents (see
//! [`super::order`]), then encodes its answer into the shared [`Outbox`] and wakes the
//! connection task. Buffers are allocated when bytes arrive and freed as soon as they are
//! drained, so an idle connection holds no buffer at all.

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use datamiddleware_protocol::message::{encode_doc_frame, get_fields};
use datamiddleware_protocol::{
    Credential, DocRef, ErrorCode, FrameError, HEADER_LEN, Header, HelloOk, Message, Opcode,
    PRE_HANDSHAKE_MAX_BODY, Tier, VERSION, check, decode_checked, request_id_of,
};
use tokio::time::Instant;

use super::TcpContext;
use super::dispatch::{self, Request};
use super::order::{Order, Touch, Waits};
use super::outbox::{Answer, Done, Outbox, Wake};
use super::transport::Transport;
use crate::auth::{Caller, UNAUTHORIZED};
use crate::error::ServiceError;
use crate::ingress::CLOSE_FLUSH;
use crate::ingress::drain::{self, Drain};
use crate::ops::metrics::TcpEnd;
use crate::service::{Get, L1Answer, ReadResult, Reply, ResponsePermit};

/// Bytes reserved for reading when a read finds no room.
const READ_CHUNK: usize = 4096;
/// PINGs answered per heartbeat tick; more are ignored (a flood costs nothing but reading).
const MAX_PINGS_PER_TICK: u32 = 16;
/// Reads within one tick from which a connection counts as busy and keeps its buffers.
const BUSY_READS: u32 = 8;

#[derive(Debug)]
enum Phase {
    /// Waiting for HELLO.
    Handshake,
    Ready,
    /// Reading has stopped (GOAWAY sent, EOF, or a protocol violation): the requests already
    /// read finish and are answered, then `last` (an error frame and its request id) is
    /// written and the connection closes.
    Finishing {
        last: Option<(u32, Message)>,
        since: Instant,
    },
}

struct Conn<'a, T> {
    /// The socket, or TLS over it.
    stream: T,
    ctx: &'a TcpContext,
    read_buf: BytesMut,
    out: BytesMut,
    outbox: Arc<Outbox>,
    phase: Phase,
    last_recv: Instant,
    last_write_progress: Instant,
    last_ping_sent: Instant,
    /// The id of the last request read: the next must come after it (serial-number order),
    /// and GOAWAY reports it.
    last_request_id: Option<u32>,
    pings_this_tick: u32,
    /// Reads since the last tick. A busy connection keeps its buffers between requests
    /// (allocating and freeing both per request was ~350 instructions of ~5,000 at depth 1);
    /// a quiet one frees them as soon as they drain.
    reads_this_tick: u32,
    /// Which unanswered requests touch which documents.
    order: Order,
    /// Answers moved from the outbox into `out` so far.
    moved: u64,
    /// True when, at the last move, every dispatched request had been answered.
    idle: bool,
    /// Bytes written to the socket so far; `out` holds the ones after.
    written: u64,
    /// Budget reservations of large answers in `out`, with the offset their frame ends at.
    permits: VecDeque<(u64, ResponsePermit)>,
    /// GETs that L1 could not answer inline, handed to the service together once the bytes at
    /// hand are parsed.
    gets: Vec<Get<Answer>>,
    /// Set when the handshake completes: the timer, armed for the handshake deadline, must
    /// start ticking for heartbeats now rather than at that deadline.
    handshake_done: bool,
    /// On whose behalf requests run: nobody (no rights) until the handshake authenticates.
    caller: Caller,
    /// The client's address (per-address rate limits).
    peer: Option<std::net::IpAddr>,
    /// The token of the HELLO, if it was one (to verify it again after a change).
    token: Option<Box<str>>,
    /// The authenticator's generation the caller was authenticated (or refreshed) under.
    generation: u64,
    /// Set when the request being read is over a rate limit: [`Conn::dispatch`] answers it
    /// with this error, in its turn among the requests on its documents.
    refused: Option<ServiceError>,
    /// Requests read by opcode − 0x10 since the last flush into the metrics (with metrics
    /// on): one shared atomic add per read from the socket instead of one per request.
    request_counts: [u32; 9],
}

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

/// Serves one connection from `peer` until it closes; why it ended.
pub(super) async fn serve<T: Transport>(
    stream: T,
    peer: Option<std::net::IpAddr>,
    ctx: &TcpContext,
    drain: &Drain,
) -> TcpEnd {
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
        last_request_id: None,
        pings_this_tick: 0,
        reads_this_tick: 0,
        order: Order::default(),
        moved: 0,
        idle: true,
        written: 0,
        permits: VecDeque::new(),
        gets: Vec::new(),
        handshake_done: false,
        caller: Caller::nobody(),
        peer,
        token: None,
        generation: 0,
        refused: None,
        request_counts: [0; 9],
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
        if std::mem::take(&mut conn.handshake_done) {
            timer.as_mut().reset(Instant::now() + conn.tick_period());
        }
        let can_read = conn.may_read();
        let wants_write = conn.has_output();
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
    // Answers still to come are dropped with their budget reservations from now on.
    conn.outbox.close();
    let peer_gone = matches!(end, End::PeerClosed | End::Io(_));
    let _ = tokio::time::timeout(CLOSE_FLUSH, conn.close(!peer_gone)).await;
    tracing::debug!(%end, "TCP connection closed");
    match end {
        End::PeerClosed => TcpEnd::PeerClosed,
        End::Io(_) => TcpEnd::Io,
        End::Stalled => TcpEnd::Stalled,
        End::Finished => TcpEnd::Finished,
        End::GraceOver => TcpEnd::GraceOver,
    }
}

impl<T: Transport> Conn<'_, T> {
    /// Moves finished answers into the output, decodes buffered frames the window allows,
    /// and writes what the socket takes without blocking.
    fn step(&mut self) -> Result<(), End> {
        let written = self.written;
        let permits = &mut self.permits;
        let taken = self.outbox.take_into(&mut self.out, |end, permit| {
            permits.push_back((written + end as u64, permit));
        });
        self.moved = taken.answered;
        self.idle = taken.idle;
        if taken.idle {
            self.order.clear();
            if let Phase::Finishing { last, .. } = &mut self.phase
                && let Some((id, error)) = last.take()
            {
                // The error that ends the connection goes out after every answer.
                error.encode(id, &mut self.out);
            }
        }
        self.process_buffered();
        self.try_write()
    }

    fn finished(&self) -> bool {
        matches!(self.phase, Phase::Finishing { last: None, .. }) && self.idle && !self.has_output()
    }

    /// True while bytes for the client wait: in `out`, or taken by the transport (TLS records
    /// not on the socket yet).
    fn has_output(&self) -> bool {
        !self.out.is_empty() || self.stream.has_unsent()
    }

    fn window_full(&self) -> bool {
        self.outbox.in_flight() >= self.ctx.config.max_in_flight as usize
    }

    /// Reading stops while the in-flight window is full or too much output is pending
    /// (back-pressure), and for good once the connection is finishing.
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
            Ok(0) => return self.peer_finished(),
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

    /// EOF: the client sends nothing more. Requests already read are answered; a frame cut
    /// off by the EOF is dropped.
    fn peer_finished(&mut self) -> Result<(), End> {
        if matches!(self.phase, Phase::Handshake) {
            return Err(End::PeerClosed);
        }
        self.read_buf = BytesMut::new();
        self.finish(None);
        Ok(())
    }

    fn process_buffered(&mut self) {
        while matches!(self.phase, Phase::Handshake | Phase::Ready) && !self.read_buf.is_empty() {
            let ready = matches!(self.phase, Phase::Ready);
            if ready && self.window_full() {
                break; // resumes when answers have gone out
            }
            if self.out.len() >= self.ctx.config.max_output_bytes {
                // Inline hits are answered into `out` too: bounded like everything else.
                break; // resumes when the socket takes some of it
            }
            let max_body = if ready {
                self.ctx.config.max_frame_bytes
            } else {
                PRE_HANDSHAKE_MAX_BODY
            };
            let header = match check(&self.read_buf, max_body) {
                Ok(Some(header)) => header,
                Ok(None) => break,
                Err(e) => {
                    let id = request_id_of(&self.read_buf).unwrap_or(0);
                    self.violation(id, &e);
                    break;
                }
            };
            if ready && header.opcode.is_request() {
                let index = usize::from(header.opcode as u8 - 0x10);
                if let Some(count) = self.request_counts.get_mut(index) {
                    *count += 1;
                }
                if let Err(detail) = self.accept_request_id(header.request_id) {
                    self.fail(header.request_id, ErrorCode::ProtocolError, &detail);
                    break;
                }
                if !self.caller_still_valid() {
                    self.fail(header.request_id, ErrorCode::Unauthorized, UNAUTHORIZED);
                    break;
                }
                self.refused = self.over_rate_limit();
                if self.refused.is_none()
                    && header.opcode == Opcode::Get
                    && self.answer_cached_get(&header)
                {
                    continue;
                }
            }
            match decode_checked(&mut self.read_buf, &header) {
                Ok(message) => self.on_frame(header, message),
                Err(e) => self.violation(header.request_id, &e),
            }
        }
        if !self.gets.is_empty() {
            let gets = std::mem::take(&mut self.gets);
            self.ctx.service.get_each(&self.caller, gets);
        }
        if self.request_counts != [0; 9] {
            let metrics = &self.ctx.service.metrics().tcp;
            if metrics.enabled() {
                metrics.add_requests(&self.request_counts);
            }
            self.request_counts = [0; 9];
        }
    }

    /// False when the connection's token expired, or a reload or revocation since its
    /// handshake refuses its key or token (its requests are then refused); a key or token
    /// still accepted gets its new role and games.
    fn caller_still_valid(&mut self) -> bool {
        if !self.caller.principal.unexpired() {
            return false;
        }
        let now = self.ctx.auth.generation();
        if now == self.generation {
            return true;
        }
        match self
            .ctx
            .auth
            .refresh(&self.caller.principal, self.token.as_deref())
        {
            Ok(principal) => {
                self.caller.principal = principal;
                self.generation = now;
                true
            }
            Err(_) => false,
        }
    }

    /// The `rate_limited` error when this request is over the address's or the caller's rate.
    fn over_rate_limit(&self) -> Option<ServiceError> {
        let limits = self.ctx.auth.limits();
        let by_address = self.peer.map_or(Ok(()), |peer| limits.check_ip(peer));
        by_address
            .and_then(|()| limits.check_caller(&self.caller.principal))
            .err()
    }

    /// Checks a request's id against the previous request's (docs/protocol.md, "Request ids")
    /// and records it.
    fn accept_request_id(&mut self, id: u32) -> Result<(), String> {
        if id == 0 {
            return Err("request id 0 is reserved for connection-level frames".to_string());
        }
        if let Some(previous) = self.last_request_id {
            let step = id.wrapping_sub(previous);
            if step == 0 || step >= 1 << 31 {
                return Err(format!(
                    "request id {id} does not come after the previous request's id {previous}"
                ));
            }
        }
        self.last_request_id = Some(id);
        Ok(())
    }

    /// Quiet connections hold no buffer: empty ones are freed unless the connection is busy
    /// (BUSY_READS reads since the last tick, which resets the count).
    fn release_empty_buffers(&mut self) {
        if self.reads_this_tick >= BUSY_READS {
            return;
        }
        // Not `capacity() > 0`: a buffer written out (advanced) to its end reports no
        // capacity left while it still holds its whole allocation. An empty new one is free.
        if self.read_buf.is_empty() {
            self.read_buf = BytesMut::new();
        }
        if self.out.is_empty() {
            self.out = BytesMut::new();
        }
        if self.order.is_empty() {
            self.order = Order::default(); // `clear` keeps the tables' room for busy times
        }
    }

    /// The hot path: a whole GET frame that L1 can answer (the document, or an error such as
    /// a cached "missing") is answered from its borrowed fields, allocating nothing — unless an
    /// earlier request on the same document is still unanswered. Anything else (a miss, a
    /// malformed body, an earlier request pending) returns false and goes through the full
    /// decoder; a GET arriving there runs in a task.
    fn answer_cached_get(&mut self, header: &Header) -> bool {
        let body = &self.read_buf[HEADER_LEN..header.frame_len()];
        let Some((game, collection, id)) = get_fields(body) else {
            return false;
        };
        if !self.order.is_free(game, collection, id, self.moved) {
            return false;
        }
        match self
            .ctx
            .service
            .get_from_l1(&self.caller, game, collection, id)
        {
            L1Answer::Answered(Ok(read)) => encode_doc_frame(
                &mut self.out,
                header.request_id,
                Tier::L1,
                read.version,
                &read.body,
            ),
            // Unknown game, bad id, or a cached "missing": answered without the store too.
            L1Answer::Answered(Err(e)) => {
                dispatch::error_message(&e).encode(header.request_id, &mut self.out)
            }
            // Joins this read's batch for L2 (see `dispatch`), already checked and looked up.
            L1Answer::Missed(missed) => {
                let done = Arc::new(Done::default());
                let touch = Touch::Docs {
                    game,
                    docs: vec![(collection, id)],
                    write: false,
                };
                let waits = self.order.enter(&touch, &done, self.moved);
                // `is_free`: every earlier request on the document is done, so a read has
                // nothing to wait for.
                debug_assert!(waits.is_empty());
                self.outbox.dispatched();
                self.idle = false;
                let get = Get {
                    game: game.to_string(),
                    collection: collection.to_string(),
                    id: id.to_string(),
                    reply: Answer::new(self.outbox.clone(), header.request_id, done),
                    missed: Some(missed),
                };
                self.gets.push(get);
            }
        }
        self.read_buf.advance(header.frame_len());
        true
    }

    fn on_frame(&mut self, header: Header, message: Message) {
        let id = header.request_id;
        match (&self.phase, message) {
            (Phase::Handshake, Message::Hello(hello)) => {
                self.handshake(id, hello.version, &hello.client_name, &hello.credential)
            }
            (Phase::Handshake, _) => self.fail(
                id,
                ErrorCode::ProtocolError,
                "the first frame must be HELLO (nothing else, PING included, before HELLO_OK)",
            ),
            (_, Message::Ping(payload)) => {
                self.pings_this_tick += 1;
                if self.pings_this_tick <= MAX_PINGS_PER_TICK {
                    Message::Pong(payload).encode(id, &mut self.out);
                }
            }
            (_, Message::Pong(_)) => {}
            (_, Message::Hello(_)) => {
                self.fail(id, ErrorCode::ProtocolError, "HELLO was already received")
            }
            (_, message) if message.opcode().is_request() => self.dispatch(id, message),
            (_, message) => {
                let detail = format!("{:?} is not sent by clients", message.opcode());
                self.fail(id, ErrorCode::UnknownOpcode, &detail);
            }
        }
    }

    fn handshake(&mut self, id: u32, version: u8, client_name: &str, credential: &Credential) {
        if version < VERSION {
            let detail = format!("this server speaks protocol version {VERSION}");
            return self.fail(id, ErrorCode::UnsupportedVersion, &detail);
        }
        // Before the credential is looked at: floods of bad credentials cost no verification.
        let check = |peer| self.ctx.auth.limits().check_ip(peer);
        if let Some(Err(limited)) = self
            .peer
            .filter(|_| !self.stream.rate_paid_at_open())
            .map(check)
        {
            return self.fail(id, limited.code, &limited.message);
        }
        // Read before authenticating: a change in between is then seen at the first request.
        let generation = self.ctx.auth.generation();
        match self.ctx.auth.authenticate(client_name, credential.into()) {
            Ok(principal) => {
                tracing::debug!(client = %principal.name, "TCP handshake complete");
                if let Credential::Token(token) = credential
                    && principal.from_token()
                {
                    self.token = Some(token.as_str().into());
                }
                self.generation = generation;
                self.caller.principal = principal;
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
                self.handshake_done = true;
            }
            Err(e) => self.fail(id, e.code, &e.message),
        }
    }

    /// Runs a request in its own task, ordered against the earlier requests on its documents
    /// (see [`super::order`]).
    fn dispatch(&mut self, id: u32, message: Message) {
        let opcode = usize::from((message.opcode() as u8).saturating_sub(0x10));
        let mut request = Request::from_message(message);
        let done = Arc::new(Done::default());
        let waits = match touch(&request) {
            Some(touch) => self.order.enter(&touch, &done, self.moved),
            None => Waits::default(),
        };
        if let Some(refused) = self.refused.take() {
            // Answered in its turn (after the earlier requests on its documents), not run.
            request = Request::Refused(refused);
        } else if let Request::Message(Message::Mint {
            game,
            request: body,
        }) = request
        {
            request = Request::Mint {
                auth: self.ctx.auth.clone(),
                game,
                request: body,
            };
        }
        self.outbox.dispatched();
        self.idle = false;
        let outbox = self.outbox.clone();
        let answer = Answer::new(outbox.clone(), id, done);
        let request = match request {
            // A GET with nothing to wait for runs without a task: the GETs of one read from
            // the socket go to the service together once it is parsed (`process_buffered`).
            Request::Message(Message::Get(doc)) if waits.is_empty() => {
                let DocRef {
                    game,
                    collection,
                    id,
                } = doc;
                self.gets.push(Get {
                    game,
                    collection,
                    id,
                    reply: answer,
                    missed: None,
                });
                return;
            }
            request => request,
        };
        let service = self.ctx.service.clone();
        let caller = self.caller.clone();
        tokio::spawn(async move {
            for earlier in &waits.before_start {
                earlier.wait().await;
            }
            if outbox.is_closed() {
                // The connection ended while this request waited: nobody reads an answer,
                // and a write nobody waits for need not start (its outcome was unknown).
                answer.skip();
                return;
            }
            let (settled, settling) = tokio::sync::oneshot::channel::<()>();
            // A request refused by a rate limit is not timed: its near-zero answer would
            // pull the quantiles down exactly while limiting happens.
            let timed = !matches!(request, Request::Refused(_));
            let started = (timed && service.metrics().tcp.enabled()).then(Instant::now);
            let (response, permit) =
                dispatch::handle(&service, &caller, request, Some(settled)).await;
            if let Some(started) = started {
                service.metrics().tcp.observe(opcode, started.elapsed());
            }
            for earlier in &waits.before_answer {
                earlier.wait().await;
            }
            drop(waits);
            let pushed = answer.send(&response, permit);
            // A write answered `timeout` after its COMMIT was sent is done only once the
            // database has decided (dropping `pushed` tells the requests after it).
            let _ = settling.await;
            drop(pushed);
        });
    }

    fn violation(&mut self, id: u32, e: &FrameError) {
        self.fail(id, e.code(), &e.to_string());
    }

    /// A protocol violation or a connection-level timeout: stop reading, answer what was read,
    /// then send this error and close.
    fn fail(&mut self, id: u32, code: ErrorCode, message: &str) {
        let error = Message::Error {
            code: code.as_str().to_string(),
            message: message.to_string(),
            op_index: None,
        };
        self.read_buf = BytesMut::new();
        if self.idle {
            // Nothing in flight (and so nothing left in the outbox): the error goes out now.
            error.encode(id, &mut self.out);
            self.finish(None);
        } else {
            // The last answer's push wakes the connection, whose `step` then writes the error.
            self.finish(Some((id, error)));
        }
    }

    /// Stops reading; the connection closes once every request read has been answered and
    /// `last` has been written.
    fn finish(&mut self, last: Option<(u32, Message)>) {
        if !matches!(self.phase, Phase::Finishing { .. }) {
            self.phase = Phase::Finishing {
                last,
                since: Instant::now(),
            };
        }
    }

    fn go_away(&mut self) {
        if matches!(self.phase, Phase::Handshake | Phase::Ready) {
            Message::GoAway {
                last_request_id: self.last_request_id.unwrap_or(0),
                message: "server shutting down: finish in-flight requests and reconnect elsewhere"
                    .into(),
            }
            .encode(0, &mut self.out);
            self.finish(None);
        }
    }

    /// Periodic checks: handshake deadline, heartbeats, stalled output, ping budget, and the
    /// bound on finishing.
    fn tick(&mut self) -> Result<(), End> {
        let now = Instant::now();
        let config = &self.ctx.config;
        self.pings_this_tick = 0;
        self.reads_this_tick = 0;
        // A connection that went quiet gives back what its busy period kept.
        self.release_empty_buffers();
        if self.has_output() && now - self.last_write_progress >= config.write_timeout {
            return Err(End::Stalled);
        }
        match self.phase {
            Phase::Handshake => {
                self.fail(
                    0,
                    ErrorCode::Timeout,
                    "no HELLO within the handshake timeout",
                );
            }
            Phase::Finishing { since, .. } => {
                if now - since >= config.write_timeout {
                    return Err(End::Stalled);
                }
            }
            Phase::Ready => {
                let silent = now - self.last_recv;
                if silent >= config.heartbeat_timeout() {
                    self.fail(0, ErrorCode::Timeout, "heartbeat timeout: nothing received");
                } else if silent >= config.heartbeat_interval
                    && now - self.last_ping_sent >= config.heartbeat_interval
                {
                    Message::Ping(0).encode(0, &mut self.out);
                    self.last_ping_sent = now;
                }
            }
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
                    self.written += n as u64;
                    self.last_write_progress = Instant::now();
                    while self
                        .permits
                        .front()
                        .is_some_and(|(end, _)| *end <= self.written)
                    {
                        self.permits.pop_front();
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(End::Io(e)),
            }
        }
        if self.stream.has_unsent() {
            match self.stream.try_send_unsent() {
                // Partial progress counts too: a slow reader is not a stalled one.
                Ok(0) => {}
                Ok(_) => self.last_write_progress = Instant::now(),
                Err(e) => return Err(End::Io(e)),
            }
        }
        self.release_empty_buffers();
        Ok(())
    }

    /// Writes the last frames, then (with `linger`) ends the connection without a reset: the
    /// sending side is shut down, and what the peer still sends is read and discarded until
    /// it closes too (the caller bounds all of it by CLOSE_FLUSH). Closing a socket with unread
    /// input makes the kernel send RST, which can destroy frames the peer has not read yet.
    async fn close(&mut self, linger: bool) {
        while self.has_output() {
            if self.stream.writable().await.is_err() || self.try_write().is_err() {
                return;
            }
        }
        if !linger {
            return;
        }
        if self.stream.shutdown().await.is_err() {
            return;
        }
        self.read_buf = BytesMut::with_capacity(READ_CHUNK);
        loop {
            self.read_buf.clear();
            if self.stream.readable().await.is_err() {
                return;
            }
            match self.stream.try_read_buf(&mut self.read_buf) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    }
}

/// The documents a request touches, for the order rule (`None`: nothing to order, e.g. a TXN
/// whose body failed to parse).
fn touch(request: &Request) -> Option<Touch<'_>> {
    let write = request.writes();
    Some(match request {
        Request::Message(message) => match message {
            Message::Get(doc)
            | Message::Put { doc, .. }
            | Message::Patch { doc, .. }
            | Message::Delete { doc, .. }
            | Message::Incr { doc, .. } => Touch::Docs {
                game: &doc.game,
                docs: vec![(&doc.collection, &doc.id)],
                write,
            },
            Message::BatchGet {
                game,
                collection,
                ids,
            } => Touch::Docs {
                game,
                docs: ids
                    .iter()
                    .map(|id| (collection.as_str(), id.as_str()))
                    .collect(),
                write,
            },
            Message::List {
                game, collection, ..
            } => Touch::Collection(game, collection),
            _ => return None,
        },
        Request::Txn { game, ops: Ok(ops) } => Touch::Docs {
            game,
            docs: ops
                .iter()
                .map(|op| (op.key.collection.as_str(), op.key.id.as_str()))
                .collect(),
            write,
        },
        Request::Txn { ops: Err(_), .. } | Request::Refused(_) | Request::Mint { .. } => {
            return None;
        }
    })
}

impl Reply for Answer {
    fn reply(self, read: Result<ReadResult, ServiceError>) {
        // A GET is done once answered: dropping what `send` returns says so.
        let _done = self.send(&dispatch::read_response(read), None);
    }

    fn gone(&self) -> bool {
        self.connection_closed()
    }

    fn skip(self) {
        Answer::skip(self);
    }
}
