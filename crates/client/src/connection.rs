//! One live connection: the handshake, a writer task that coalesces queued frames into few
//! writes, a reader task that routes responses to their waiting requests by request id, and
//! heartbeats. When the connection dies every waiting request fails with `ConnectionLost`,
//! except the requests the server's GOAWAY says it never read: those are handed back as
//! [`CallError::Unread`] so the client can send them again on a new connection.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use datamiddleware_protocol::{Hello, HelloOk, Message, VERSION, decode};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::{ClientOptions, Error};

type Reply = oneshot::Sender<Result<Message, CallError>>;

/// Why a call returned no response.
#[derive(Debug)]
pub(crate) enum CallError {
    /// The server never read the request (it was sent after GOAWAY, or its id is above the
    /// GOAWAY's `last_request_id`): sending it again cannot apply it twice.
    Unread,
    /// Anything else; the outcome of a write is then unknown.
    Failed(Error),
}

impl From<Error> for CallError {
    fn from(error: Error) -> Self {
        CallError::Failed(error)
    }
}

/// A connection shared by all requests of a client.
pub(crate) struct Connection {
    frames: mpsc::UnboundedSender<BytesMut>,
    /// Requests waiting for their answers, and the id the next one gets.
    pending: Mutex<Pending>,
    /// False once the connection failed or the server sent GOAWAY: new requests then open a
    /// new connection, while requests already sent here still get their answers.
    usable: AtomicBool,
    pub hello: HelloOk,
}

impl Connection {
    /// Connects (over TLS with `options.tls`), performs the handshake and starts the reader,
    /// writer and heartbeat tasks; all of it within `options.connect_timeout`.
    pub(crate) async fn open(
        addr: &str,
        options: &ClientOptions,
    ) -> Result<Arc<Connection>, Error> {
        tokio::time::timeout(options.connect_timeout, Connection::connect(addr, options))
            .await
            .map_err(|_| {
                Error::Connect(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connect timed out",
                ))
            })?
    }

    async fn connect(addr: &str, options: &ClientOptions) -> Result<Arc<Connection>, Error> {
        let stream = TcpStream::connect(addr).await.map_err(Error::Connect)?;
        stream.set_nodelay(true).map_err(Error::Connect)?;
        match &options.tls {
            None => {
                let (reader, writer) = stream.into_split();
                Connection::start(reader, writer, options).await
            }
            Some(tls) => {
                // One lock per read or write: small next to the encryption.
                let (reader, writer) = tokio::io::split(tls.connect(addr, stream).await?);
                Connection::start(reader, writer, options).await
            }
        }
    }

    /// The protocol's HELLO exchange, then the tasks.
    async fn start<R, W>(
        mut reader: R,
        mut writer: W,
        options: &ClientOptions,
    ) -> Result<Arc<Connection>, Error>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let mut hello = BytesMut::new();
        Message::Hello(Hello {
            version: VERSION,
            client_name: options.client_name.clone(),
            credential: options.credential.clone(),
        })
        .encode(0, &mut hello);
        writer.write_all(&hello).await.map_err(Error::Connect)?;
        let mut buf = BytesMut::with_capacity(256);
        let reply = read_frame(&mut reader, &mut buf).await?;
        let hello = match reply {
            Message::HelloOk(ok) => ok,
            Message::Error {
                code,
                message,
                op_index,
            } => {
                return Err(Error::Server {
                    code,
                    message,
                    op_index,
                });
            }
            other => {
                return Err(Error::Protocol(format!(
                    "expected HELLO_OK, got {:?}",
                    other.opcode()
                )));
            }
        };
        let (frames, queue) = mpsc::unbounded_channel();
        let connection = Arc::new(Connection {
            frames,
            pending: Mutex::new(Pending {
                waiting: HashMap::new(),
                next_id: 1,
            }),
            usable: AtomicBool::new(true),
            hello,
        });
        tokio::spawn(write_loop(writer, queue));
        let interval =
            Duration::from_millis(u64::from(connection.hello.heartbeat_interval_ms.max(100)));
        // The reader holds the connection weakly: once every client handle and every request
        // has let go of it, its frame queue closes, the writer shuts the socket down, and the
        // server closes its side.
        tokio::spawn(read_loop(
            Arc::downgrade(&connection),
            reader,
            buf,
            interval,
        ));
        Ok(connection)
    }

    pub(crate) fn is_usable(&self) -> bool {
        self.usable.load(Ordering::Acquire)
    }

    /// Sends `message` as the next request and waits up to `timeout` for its response.
    pub(crate) async fn call(
        &self,
        message: &Message,
        timeout: Duration,
    ) -> Result<Message, CallError> {
        let (reply, answer) = oneshot::channel();
        let id = {
            let mut pending = self.pending.lock();
            // Checked under the lock that `go_away` and `fail_all` take after clearing
            // `usable`: a request registered here is either answered or failed by them, and
            // one that finds the connection unusable has not been sent at all.
            if !self.is_usable() {
                return Err(CallError::Unread);
            }
            // Request ids must increase in the order frames are written (docs/protocol.md,
            // "Request ids"): the id is taken and the frame queued under one lock, and the
            // writer sends the queue in order. 0 is skipped when the counter wraps.
            let id = pending.next_id;
            pending.next_id = match id.wrapping_add(1) {
                0 => 1,
                next => next,
            };
            let mut frame = BytesMut::new();
            message.encode(id, &mut frame);
            if self.frames.send(frame).is_err() {
                return Err(CallError::Failed(Error::ConnectionLost));
            }
            pending.waiting.insert(id, reply);
            id
        };
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(CallError::Failed(Error::ConnectionLost)),
            Err(_) => {
                self.pending.lock().waiting.remove(&id);
                Err(CallError::Failed(Error::Timeout))
            }
        }
    }

    /// The server will read nothing after `last_request_id`: requests sent after it were
    /// never read, so they go back to be sent on another connection. The others still get
    /// their answers before the server closes. Ids increase in send order, so "after" is a
    /// comparison in serial-number order, which holds across the wrap of the counter.
    fn go_away(&self, last_request_id: u32) {
        self.usable.store(false, Ordering::Release);
        let unread: Vec<Reply> = {
            let mut pending = self.pending.lock();
            let ids: Vec<u32> = pending
                .waiting
                .keys()
                .copied()
                .filter(|&id| comes_after(id, last_request_id))
                .collect();
            ids.iter()
                .filter_map(|id| pending.waiting.remove(id))
                .collect()
        };
        for reply in unread {
            let _ = reply.send(Err(CallError::Unread));
        }
    }

    fn fail_all(&self) {
        self.usable.store(false, Ordering::Release);
        let pending: Vec<Reply> = self
            .pending
            .lock()
            .waiting
            .drain()
            .map(|(_, reply)| reply)
            .collect();
        for reply in pending {
            let _ = reply.send(Err(CallError::Failed(Error::ConnectionLost)));
        }
    }
}

/// Requests in flight on one connection.
struct Pending {
    waiting: HashMap<u32, Reply>,
    next_id: u32,
}

/// True when request id `id` was sent after `last` (serial-number order, RFC 1982).
fn comes_after(id: u32, last: u32) -> bool {
    let step = id.wrapping_sub(last);
    step != 0 && step < 1 << 31
}

/// Reads one whole frame (used during the handshake).
async fn read_frame(
    reader: &mut (impl AsyncRead + Unpin),
    buf: &mut BytesMut,
) -> Result<Message, Error> {
    loop {
        if let Some((_, message)) =
            decode(buf, u32::MAX).map_err(|e| Error::Protocol(e.to_string()))?
        {
            return Ok(message);
        }
        if reader.read_buf(buf).await.map_err(Error::Connect)? == 0 {
            return Err(Error::ConnectionLost);
        }
    }
}

/// Writes queued frames, taking everything queued at once into one write.
async fn write_loop(
    mut writer: impl AsyncWrite + Unpin,
    mut queue: mpsc::UnboundedReceiver<BytesMut>,
) {
    let mut batch = Vec::with_capacity(64);
    while queue.recv_many(&mut batch, 64).await > 0 {
        let mut out = BytesMut::new();
        for frame in batch.drain(..) {
            if out.is_empty() {
                out = frame;
            } else {
                out.extend_from_slice(&frame);
            }
        }
        if writer.write_all(&out).await.is_err() {
            return;
        }
    }
    let _ = writer.shutdown().await;
}

/// Routes responses to waiting requests, answers server PINGs, sends our own PINGs, and
/// declares the connection dead after three silent heartbeat intervals.
async fn read_loop(
    connection: std::sync::Weak<Connection>,
    mut reader: impl AsyncRead + Unpin,
    mut buf: BytesMut,
    interval: Duration,
) {
    let mut last_recv = Instant::now();
    let mut heartbeat = tokio::time::interval_at(Instant::now() + interval, interval);
    loop {
        // Nobody holds the connection any more: nothing to route answers to.
        let Some(live) = connection.upgrade() else {
            return;
        };
        loop {
            match decode(&mut buf, u32::MAX) {
                Ok(Some((header, message))) => on_frame(&live, header.request_id, message),
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "protocol error from the server; dropping the connection");
                    live.fail_all();
                    return;
                }
            }
        }
        drop(live);
        tokio::select! {
            read = reader.read_buf(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(_) => last_recv = Instant::now(),
            },
            _ = heartbeat.tick() => {
                if last_recv.elapsed() > interval * 3 {
                    tracing::warn!("no heartbeat from the server; dropping the connection");
                    break;
                }
                let Some(live) = connection.upgrade() else {
                    return;
                };
                let mut ping = BytesMut::new();
                Message::Ping(0).encode(0, &mut ping);
                let _ = live.frames.send(ping);
            }
        }
    }
    if let Some(live) = connection.upgrade() {
        live.fail_all();
    }
}

fn on_frame(connection: &Connection, request_id: u32, message: Message) {
    match message {
        Message::Ping(payload) => {
            let mut pong = BytesMut::new();
            Message::Pong(payload).encode(request_id, &mut pong);
            let _ = connection.frames.send(pong);
        }
        Message::Pong(_) if request_id == 0 => {} // answer to a heartbeat
        Message::GoAway {
            last_request_id, ..
        } => connection.go_away(last_request_id),
        Message::Error { .. } if request_id == 0 => {
            // A connection-level error (timeout, protocol error, overload): it will close.
            tracing::warn!(?message, "connection-level error from the server");
            connection.usable.store(false, Ordering::Release);
        }
        message => {
            if let Some(reply) = connection.pending.lock().waiting.remove(&request_id) {
                let _ = reply.send(Ok(message));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::comes_after;

    #[test]
    fn after_is_serial_number_order() {
        assert!(comes_after(8, 7));
        assert!(!comes_after(7, 7));
        assert!(!comes_after(6, 7));
        assert!(comes_after(1, u32::MAX), "across the wrap");
        assert!(!comes_after(u32::MAX, 1));
    }
}
