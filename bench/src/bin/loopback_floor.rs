//! `loopback-floor`: what the kernel alone charges a sender for one delivery on
//! loopback TCP, measured without chatmesh.
//!
//! One thread writes `--frame-bytes` frames round-robin over `--sockets`
//! loopback connections (TCP_NODELAY, like the node's), `--batch` frames per
//! `write`; another thread reads everything back. On loopback the receiving
//! socket's protocol work runs inside the sender's `write`, so the sender
//! thread's CPU per frame is the floor under any server's "CPU per delivery"
//! on this machine when the clients are local — the same accounting
//! `chatmesh-bench` applies to the node. Output: one markdown row per batch size.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chatmesh_bench::procstat::thread_cpu_seconds;
use clap::Parser;

#[derive(Parser)]
#[command(about = "Kernel CPU per frame written to loopback TCP sockets (no chatmesh involved)")]
struct Args {
    /// Connections written round-robin.
    #[arg(long, default_value_t = 500)]
    sockets: usize,
    /// Bytes per frame (a chatmesh `message` frame of the peer's scenario is ~190).
    #[arg(long, default_value_t = 190)]
    frame_bytes: usize,
    /// Frames per `write`, one row each, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16")]
    batch: Vec<usize>,
    /// Seconds per row.
    #[arg(long, default_value_t = 3.0)]
    secs: f64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a loopback port")?;
    let addr = listener.local_addr()?;
    let mut senders = Vec::with_capacity(args.sockets);
    let mut receivers = Vec::with_capacity(args.sockets);
    for _ in 0..args.sockets {
        let client = TcpStream::connect(addr).context("connecting")?;
        let (server, _) = listener.accept().context("accepting")?;
        server.set_nodelay(true)?;
        client.set_nonblocking(true)?;
        senders.push(server);
        receivers.push(client);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let reader = {
        let (stop, received) = (stop.clone(), received.clone());
        std::thread::spawn(move || drain(receivers, &stop, &received))
    };
    println!(
        "loopback TCP, {} sockets, {}-byte frames, {} s per row, sender thread CPU from /proc/thread-self/stat",
        args.sockets, args.frame_bytes, args.secs
    );
    println!();
    println!("| frames per write | writes | frames | sender CPU s | µs per write | µs per frame |");
    println!("|---:|---:|---:|---:|---:|---:|");
    let frame = vec![b'x'; args.frame_bytes];
    for &batch in &args.batch {
        let buf = frame.repeat(batch.max(1));
        let (mut writes, started) = (0u64, Instant::now());
        let cpu0 = thread_cpu_seconds().context("reading /proc/thread-self/stat")?;
        'row: loop {
            for socket in &mut senders {
                socket.write_all(&buf).context("writing")?;
                writes += 1;
                if writes % 1024 == 0 && started.elapsed() >= Duration::from_secs_f64(args.secs) {
                    break 'row;
                }
            }
        }
        let cpu = thread_cpu_seconds().context("reading /proc/thread-self/stat")? - cpu0;
        let frames = writes * batch as u64;
        println!(
            "| {batch} | {writes} | {frames} | {cpu:.2} | {:.2} | {:.2} |",
            cpu * 1e6 / writes as f64,
            cpu * 1e6 / frames as f64
        );
    }
    stop.store(true, Ordering::Release);
    let _ = reader.join();
    eprintln!("reader got {} bytes", received.load(Ordering::Relaxed));
    Ok(())
}

/// Reads every socket until told to stop; spins instead of polling so that
/// none of its work is charged to the sender.
fn drain(mut sockets: Vec<TcpStream>, stop: &AtomicBool, received: &AtomicU64) {
    let mut buf = vec![0u8; 1 << 16];
    while !stop.load(Ordering::Acquire) {
        for s in &mut sockets {
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        received.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => break,
                }
            }
        }
    }
}
