//! The byte stream under one TCP-protocol connection: the socket itself, or TLS over it.
//!
//! A connection is driven by readiness (wait until the socket is readable or writable, then
//! read or write without waiting), which lets an idle connection hold no buffer at all. The
//! TLS handshake is done by tokio-rustls before the connection starts; [`Tls`] then drives the
//! rustls session directly over the same readiness, so TLS connections keep that property
//! (rustls' own buffers aside).

use std::io::{self, BufRead, ErrorKind, IoSlice, Read, Write};

use bytes::BytesMut;
use rustls::ServerConnection;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// What a connection needs from its byte stream. Every `try_` method returns at once:
/// `WouldBlock` when nothing could be done now.
pub(super) trait Transport: Send {
    /// Completes when a read may make progress (bytes, the end of the stream, or an error).
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send;
    /// Completes when a write may make progress.
    fn writable(&self) -> impl Future<Output = io::Result<()>> + Send;
    /// Appends what has arrived to `buf`; `Ok(0)` at the end of the stream.
    fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize>;
    /// Takes some of `data` for sending.
    fn try_write(&mut self, data: &[u8]) -> io::Result<usize>;
    /// True while bytes taken by `try_write` have not all reached the socket yet.
    fn has_unsent(&self) -> bool;
    /// Hands what `has_unsent` holds to the socket, as far as it takes it: the bytes written
    /// (0 when the socket took none).
    fn try_send_unsent(&mut self) -> io::Result<usize>;
    /// Ends the sending side once what was taken is sent (TLS: after `close_notify`).
    fn shutdown(&mut self) -> impl Future<Output = io::Result<()>> + Send;
    /// True when opening it already counted against the client address's rate (a TLS
    /// handshake), so HELLO is not charged again.
    fn rate_paid_at_open(&self) -> bool {
        false
    }
}

impl Transport for TcpStream {
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        TcpStream::readable(self)
    }

    fn writable(&self) -> impl Future<Output = io::Result<()>> + Send {
        TcpStream::writable(self)
    }

    fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        TcpStream::try_read_buf(self, buf)
    }

    fn try_write(&mut self, data: &[u8]) -> io::Result<usize> {
        TcpStream::try_write(self, data)
    }

    fn has_unsent(&self) -> bool {
        false
    }

    fn try_send_unsent(&mut self) -> io::Result<usize> {
        Ok(0)
    }

    fn shutdown(&mut self) -> impl Future<Output = io::Result<()>> + Send {
        AsyncWriteExt::shutdown(self)
    }
}

/// TLS over a socket whose handshake is complete.
pub(super) struct Tls {
    tcp: TcpStream,
    session: ServerConnection,
    /// False once the session said it holds no plaintext: from then on only the socket
    /// becoming readable can bring more. True right after the handshake, which may have
    /// read the client's first records already.
    plaintext_ready: bool,
}

impl Tls {
    pub(super) fn new(tcp: TcpStream, session: ServerConnection) -> Tls {
        Tls {
            tcp,
            session,
            plaintext_ready: true,
        }
    }

    /// Moves plaintext the session holds into `buf`: `None` when it holds none.
    fn take_plaintext(&mut self, buf: &mut BytesMut) -> Option<io::Result<usize>> {
        let mut reader = self.session.reader();
        match reader.fill_buf() {
            Ok(chunk) => {
                // Empty: the client closed the session (`close_notify`).
                let n = chunk.len();
                buf.extend_from_slice(chunk);
                reader.consume(n);
                Some(Ok(n))
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                self.plaintext_ready = false;
                None
            }
            // The socket ended without `close_notify`: the frames decide what was whole.
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => Some(Ok(0)),
            Err(e) => Some(Err(e)),
        }
    }
}

impl Transport for Tls {
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        let ready = self.plaintext_ready;
        async move {
            if ready {
                Ok(())
            } else {
                self.tcp.readable().await
            }
        }
    }

    fn writable(&self) -> impl Future<Output = io::Result<()>> + Send {
        self.tcp.writable()
    }

    fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        loop {
            if let Some(read) = self.take_plaintext(buf) {
                return read;
            }
            // `Ok(0)` (end of stream) is kept by the session: the next `take_plaintext` says so.
            self.session.read_tls(&mut Socket(&self.tcp))?;
            if let Err(e) = self.session.process_new_packets() {
                // The session queued an alert telling the client why; best effort.
                let _ = self.try_send_unsent();
                return Err(io::Error::new(ErrorKind::InvalidData, e));
            }
            self.plaintext_ready = true;
            // Records the session answers by itself (a key update, say) go out now.
            self.try_send_unsent()?;
        }
    }

    fn try_write(&mut self, data: &[u8]) -> io::Result<usize> {
        // The session takes plaintext up to its buffer limit (64 KiB of records by default).
        let mut taken = self.session.writer().write(data)?;
        self.try_send_unsent()?;
        if taken == 0 && !self.session.wants_write() {
            // The records went out and made room.
            taken = self.session.writer().write(data)?;
        }
        if taken == 0 {
            return Err(ErrorKind::WouldBlock.into());
        }
        Ok(taken)
    }

    fn has_unsent(&self) -> bool {
        self.session.wants_write()
    }

    fn try_send_unsent(&mut self) -> io::Result<usize> {
        let mut sent = 0;
        while self.session.wants_write() {
            match self.session.write_tls(&mut Socket(&self.tcp)) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(sent)
    }

    fn shutdown(&mut self) -> impl Future<Output = io::Result<()>> + Send {
        self.session.send_close_notify();
        async move {
            self.try_send_unsent()?;
            while self.session.wants_write() {
                self.tcp.writable().await?;
                self.try_send_unsent()?;
            }
            AsyncWriteExt::shutdown(&mut self.tcp).await
        }
    }

    fn rate_paid_at_open(&self) -> bool {
        true
    }
}

/// The socket as rustls reads and writes records: without waiting (`WouldBlock` when it
/// cannot), which also tells tokio to wait for readiness again.
struct Socket<'a>(&'a TcpStream);

impl Read for Socket<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for Socket<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
