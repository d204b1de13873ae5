//! The servers of `chatmesh-testserver` against the real binaries: each starts,
//! answers, and comes back on the same port(s) after a kill.

use chatmesh_testserver::kafka::TansuServer;
use chatmesh_testserver::nats::{NatsCluster, NatsServer};
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
