//! The servers of `chatmesh-testserver` against the real binaries: each starts,
//! answers, and comes back on the same port(s) after a kill.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use chatmesh_testserver::kafka::TansuServer;
use chatmesh_testserver::nats::{NatsCluster, NatsServer};
use chatmesh_testserver::rabbitmq::{RabbitCluster, RabbitServer};
use chatmesh_testserver::redis::{RedisCluster, RedisServer};

#[test]
fn redis_restarts_on_the_same_port_with_empty_data() {
    let mut r = RedisServer::start().expect("redis-server starts");
    let port = r.port();
    r.cli(&["SET", "k", "v"]).expect("set");
    r.kill();
    assert!(r.pid().is_none());
    r.restart().expect("restart");
    assert_eq!(r.port(), port);
    assert_eq!(r.cli(&["GET", "k"]).expect("get").trim(), "");
}

#[test]
fn redis_cluster_has_three_masters() {
    let c = RedisCluster::start().expect("redis cluster starts");
    assert_eq!(c.ports().len(), 3);
    assert_eq!(c.url().split(',').count(), 3);
}

#[test]
fn nats_restarts_on_the_same_ports() {
    let mut n = NatsServer::start().expect("nats-server starts");
    let (url, monitor) = (n.url(), n.monitor_port());
    n.kill();
    n.restart().expect("restart");
    assert_eq!((n.url(), n.monitor_port()), (url, monitor));
    assert!(n.monitor("/jsz").expect("jsz").contains("memory"));
}

#[test]
fn nats_cluster_has_three_routed_servers() {
    let c = NatsCluster::start().expect("nats cluster starts");
    assert_eq!(c.urls().len(), 3);
    assert_eq!(c.monitor_ports().len(), 3);
}

#[test]
fn tansu_restarts_on_the_same_port() {
    let mut t = TansuServer::start().expect("tansu starts");
    let (bootstrap, pid) = (t.bootstrap(), t.pid());
    assert!(pid.is_some());
    t.kill();
    assert!(t.pid().is_none());
    t.restart().expect("restart");
    assert_eq!(t.bootstrap(), bootstrap);
    assert_ne!(t.pid(), pid, "a new process");
}

/// Whether an AMQP 0-9-1 server on `port` answers the protocol header with a
/// Connection.Start: a METHOD frame (type 1) on channel 0 whose payload starts
/// with class 10, method 10.
fn answers_amqp(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    // frame type (1), channel (2), size (4), then class and method ids (2 + 2).
    let mut head = [0u8; 11];
    let answered = s
        .write_all(b"AMQP\x00\x00\x09\x01")
        .and_then(|()| s.read_exact(&mut head));
    answered.is_ok() && head[0] == 1 && head[1..3] == [0, 0] && head[7..11] == [0, 10, 0, 10]
}

#[test]
fn rabbitmq_restarts_on_the_same_port_with_its_data() {
    let mut r = RabbitServer::start().expect("rabbitmq-server starts");
    let port = r.port();
    assert_eq!(r.url(), format!("amqp://guest:guest@127.0.0.1:{port}/%2f"));
    let pid = r.pid().expect("a pid");
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("/proc/<pid>/exe");
    assert!(exe.ends_with("beam.smp"), "the PID held is the VM: {exe:?}");
    assert!(answers_amqp(port), "Connection.Start on :{port}");
    r.rabbitmqctl(&["add_vhost", "kept"]).expect("add_vhost");

    r.kill();
    assert!(r.pid().is_none());
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "closed");

    r.restart().expect("restart");
    assert_eq!(r.port(), port);
    assert!(answers_amqp(port), "Connection.Start after the restart");
    let status = r.rabbitmqctl(&["status"]).expect("status");
    assert!(status.contains("RabbitMQ version: 3.10"), "{status}");
    let vhosts = r.rabbitmqctl(&["list_vhosts", "-q"]).expect("list_vhosts");
    assert!(
        vhosts.lines().any(|l| l == "kept"),
        "same data dir: {vhosts}"
    );
}

/// `names` sorted, to compare node lists in any order.
fn sorted(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    names
}

#[test]
fn rabbitmq_cluster_has_three_nodes_and_a_killed_one_rejoins() {
    let t = Instant::now();
    let mut c = RabbitCluster::start().expect("rabbitmq cluster starts");
    eprintln!("rabbitmq cluster: ready in {:.1?}", t.elapsed());
    let ports = c.ports();
    assert_eq!(ports.len(), 3);
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("amqp://guest:guest@127.0.0.1:{p}/%2f"))
        .collect();
    assert_eq!(c.urls(), urls);
    let names = c.names();
    assert_eq!(
        names,
        ports
            .iter()
            .map(|p| format!("t{p}@localhost"))
            .collect::<Vec<_>>()
    );
    for (i, &port) in ports.iter().enumerate() {
        assert!(
            answers_amqp(port),
            "Connection.Start from node {i} on :{port}"
        );
        let pid = c.pid(i).expect("a pid");
        let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .map(str::to_owned)
            });
        eprintln!("rabbitmq cluster: node {i} {} pid {pid} {rss:?}", names[i]);
    }
    let status = c
        .rabbitmqctl(0, &["cluster_status"])
        .expect("cluster_status");
    assert!(status.contains("Running Nodes"), "{status}");
    let running = sorted(c.running_nodes(0).expect("running nodes"));
    assert_eq!(running, sorted(names.clone()), "{status}");

    c.kill(1);
    assert!(c.pid(1).is_none());
    assert!(
        TcpStream::connect(("127.0.0.1", ports[1])).is_err(),
        "closed"
    );
    let t = Instant::now();
    let running = c.wait_running(0, 2).expect("node 0 sees node 1 go");
    eprintln!(
        "rabbitmq cluster: node 0 lists 2 running after {:.1?}",
        t.elapsed()
    );
    assert_eq!(
        sorted(running),
        sorted(vec![names[0].clone(), names[2].clone()])
    );

    let t = Instant::now();
    c.restart(1).expect("node 1 restarts");
    eprintln!("rabbitmq cluster: node 1 back in {:.1?}", t.elapsed());
    assert_eq!(c.ports(), ports, "same ports");
    assert!(answers_amqp(ports[1]), "Connection.Start after the restart");
    let running = c.wait_running(0, 3).expect("node 0 sees node 1 back");
    assert_eq!(sorted(running), sorted(names));
}
