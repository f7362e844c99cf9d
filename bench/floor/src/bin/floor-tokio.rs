//! The floor on tokio: the runtime portico-proxy runs on (one current-thread runtime, I/O and
//! timer drivers), a task per client connection that reads a request, writes it upstream,
//! reads the response and writes it back. What this costs over `floor-epoll` is the
//! runtime's share of any tokio proxy's CPU per request.

use portico_floor::{addresses, request_len, response_len};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BUF: usize = 16 * 1024;

fn main() {
    let (listen_addr, upstream_addr) = addresses();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let listener = TcpListener::bind(listen_addr).await.expect("bind");
        loop {
            let Ok((client, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _ = forward(client, upstream_addr).await;
            });
        }
    });
}

/// Forwards requests and responses until either side closes.
async fn forward(mut client: TcpStream, upstream: SocketAddr) -> std::io::Result<()> {
    client.set_nodelay(true)?;
    let mut up = TcpStream::connect(upstream).await?;
    up.set_nodelay(true)?;
    let mut req: Vec<u8> = Vec::with_capacity(BUF);
    let mut resp: Vec<u8> = Vec::with_capacity(BUF);
    while pass(&mut client, &mut up, &mut req, request_len).await?
        && pass(&mut up, &mut client, &mut resp, response_len).await?
    {}
    Ok(())
}

/// Reads from `from` into `buf` until it holds a complete message (as `complete` frames it)
/// and writes that to `to`. False when `from` has ended.
async fn pass(
    from: &mut TcpStream,
    to: &mut TcpStream,
    buf: &mut Vec<u8>,
    complete: fn(&[u8]) -> Option<usize>,
) -> std::io::Result<bool> {
    let len = loop {
        if let Some(len) = complete(buf) {
            break len;
        }
        buf.reserve(4096);
        if from.read_buf(buf).await? == 0 {
            return Ok(false);
        }
    };
    to.write_all(&buf[..len]).await?;
    buf.drain(..len);
    Ok(true)
}
