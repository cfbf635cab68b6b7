//! GOAWAY handling against a scripted server: the real server's GOAWAY races with the client's
//! next request, so the two outcomes (the request was read, or it was not) are forced here.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use datamiddleware_client::{Client, ClientOptions, Error, Tier};
use datamiddleware_protocol::{HelloOk, Message, VERSION, decode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One accepted connection of the scripted server, past the handshake.
struct Peer {
    stream: TcpStream,
    buf: BytesMut,
}

impl Peer {
    async fn accept(listener: &TcpListener) -> Peer {
        let (stream, _) = listener.accept().await.expect("accept");
        let mut peer = Peer {
            stream,
            buf: BytesMut::new(),
        };
        let (_, hello) = peer.read().await;
        assert!(matches!(hello, Message::Hello(_)), "{hello:?}");
        peer.send(
            0,
            Message::HelloOk(HelloOk {
                version: VERSION,
                heartbeat_interval_ms: 10_000,
                max_frame: 1 << 20,
                max_in_flight: 64,
                server: "scripted".into(),
            }),
        )
        .await;
        peer
    }

    async fn read(&mut self) -> (u32, Message) {
        loop {
            if let Some((header, message)) = decode(&mut self.buf, u32::MAX).expect("a frame") {
                return (header.request_id, message);
            }
            let n = self.stream.read_buf(&mut self.buf).await.expect("read");
            assert!(n > 0, "the client closed");
        }
    }

    async fn send(&mut self, id: u32, message: Message) {
        let mut out = BytesMut::new();
        message.encode(id, &mut out);
        self.stream.write_all(&out).await.expect("write");
    }

    /// Sends GOAWAY naming `last_request_id` as the last request read, then closes.
    async fn go_away(mut self, last_request_id: u32) {
        let message = "scripted shutdown".into();
        self.send(
            0,
            Message::GoAway {
                last_request_id,
                message,
            },
        )
        .await;
        let _ = self.stream.shutdown().await;
    }
}

fn options() -> ClientOptions {
    ClientOptions {
        request_timeout: Duration::from_secs(5),
        max_connect_attempts: 1,
        ..ClientOptions::default()
    }
}

#[tokio::test]
async fn a_request_the_server_did_not_read_is_sent_again_on_a_new_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = Client::new(listener.local_addr().unwrap().to_string(), options());
    let server = tokio::spawn(async move {
        let mut first = Peer::accept(&listener).await;
        let (id, get) = first.read().await;
        assert!(matches!(get, Message::Get(_)), "{get:?}");
        first.go_away(id - 1).await;
        let mut second = Peer::accept(&listener).await;
        let (id, get) = second.read().await;
        assert!(matches!(get, Message::Get(_)), "{get:?}");
        let doc = Message::Doc {
            tier: Tier::L1,
            created: false,
            version: 7,
            doc: Bytes::from_static(
                br#"{"id":"p","owner":null,"version":7,"updated_at":0,"value":{}}"#,
            ),
        };
        second.send(id, doc).await;
        second
    });
    let doc = client.get("default", "players", "p").await.unwrap();
    assert_eq!((doc.version, doc.tier), (7, Tier::L1));
    server.await.unwrap();
}

#[tokio::test]
async fn a_request_the_server_read_is_not_repeated() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = Client::new(listener.local_addr().unwrap().to_string(), options());
    let server = tokio::spawn(async move {
        let mut first = Peer::accept(&listener).await;
        let (id, _) = first.read().await;
        // Read, and then the connection ends without an answer: the write may have happened.
        first.go_away(id).await;
        tokio::time::timeout(Duration::from_millis(500), listener.accept())
            .await
            .is_ok()
    });
    let err = client.get("default", "players", "p").await.unwrap_err();
    assert!(matches!(err, Error::ConnectionLost), "{err:?}");
    assert!(
        !server.await.unwrap(),
        "the client connected again to resend"
    );
}
