//! Opens many idle, authenticated TCP protocol connections and keeps them alive with
//! heartbeats, for measuring the server's memory per connection (`bench/tcp_conns.sh`).
//!
//! Usage: `idle_conns <server-addr> <count> <hold-seconds> [source-ip ...]`
//! Connections are spread over the source addresses (default 127.0.0.2..127.0.0.9) so one
//! loopback address's port range is never the limit. Prints `ready <n>` once all handshakes
//! are done, then `done <alive> <dropped>` after holding.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use datamiddleware_protocol::{Credential, Hello, Message, decode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::sync::Semaphore;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        return Err(
            "usage: idle_conns <server-addr> <count> <hold-seconds> [source-ip ...]".into(),
        );
    }
    let server: SocketAddr = args[0].parse()?;
    let count: usize = args[1].parse()?;
    let hold = Duration::from_secs(args[2].parse()?);
    let sources: Vec<IpAddr> = if args.len() > 3 {
        args[3..]
            .iter()
            .map(|a| a.parse())
            .collect::<Result<_, _>>()?
    } else {
        (2..10).map(|i| IpAddr::from([127, 0, 0, i])).collect()
    };
    let ready = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicUsize::new(0));
    let connecting = Arc::new(Semaphore::new(256)); // connect in waves, not a SYN flood
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        let source = sources[i % sources.len()];
        let (ready, failed, dropped, connecting) = (
            ready.clone(),
            failed.clone(),
            dropped.clone(),
            connecting.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let permit = connecting.acquire_owned().await;
            let Ok(mut stream) = open(server, source).await else {
                failed.fetch_add(1, Ordering::Relaxed);
                return;
            };
            drop(permit);
            ready.fetch_add(1, Ordering::Relaxed);
            // Idle, but alive: a PING every 20 s (the server's interval is 30 s), and read
            // whatever comes (PONGs, the server's PINGs are answered).
            let mut buf = BytesMut::new();
            let mut ping = tokio::time::interval(Duration::from_secs(20));
            loop {
                tokio::select! {
                    _ = ping.tick() => {
                        let mut frame = BytesMut::new();
                        Message::Ping(i as u64).encode(0, &mut frame);
                        if stream.write_all(&frame).await.is_err() { break; }
                    }
                    read = stream.read_buf(&mut buf) => {
                        if !matches!(read, Ok(n) if n > 0) { break; }
                        while let Ok(Some((header, message))) = decode(&mut buf, u32::MAX) {
                            if let Message::Ping(p) = message {
                                let mut frame = BytesMut::new();
                                Message::Pong(p).encode(header.request_id, &mut frame);
                                let _ = stream.write_all(&frame).await;
                            }
                        }
                        buf = BytesMut::new();
                    }
                }
            }
            dropped.fetch_add(1, Ordering::Relaxed);
        }));
    }
    loop {
        let (r, f) = (
            ready.load(Ordering::Relaxed),
            failed.load(Ordering::Relaxed),
        );
        eprint!("\rconnected {r} / {count}, failed {f}   ");
        if r + f >= count {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!();
    println!("ready {}", ready.load(Ordering::Relaxed));
    tokio::time::sleep(hold).await;
    let dropped = dropped.load(Ordering::Relaxed);
    println!(
        "done {} {}",
        ready.load(Ordering::Relaxed) - dropped,
        dropped
    );
    Ok(())
}

async fn open(server: SocketAddr, source: IpAddr) -> std::io::Result<tokio::net::TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let mut stream = socket.connect(server).await?;
    let mut frame = BytesMut::new();
    Message::Hello(Hello {
        version: 1,
        client_name: "idle".into(),
        credential: Credential::None,
    })
    .encode(1, &mut frame);
    stream.write_all(&frame).await?;
    let mut buf = BytesMut::new();
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        match decode(&mut buf, u32::MAX) {
            Ok(Some((_, Message::HelloOk(_)))) => return Ok(stream),
            Ok(Some(_)) | Err(_) => return Err(std::io::ErrorKind::ConnectionRefused.into()),
            Ok(None) => {}
        }
    }
}
