//! `RabbitBroker` against one real `rabbitmq-server`: two broker values play
//! two nodes.

mod common;

use chatmesh_broker::conformance::OddNames;
use common::*;

// Every check of the suite, each a test named after it.
chatmesh_broker::conformance_tests!(
    factory: factory(server()),
    odd_names: odd_names(),
    stopped: {
        let mut t = server();
        t.kill();
        t
    },
    broker_on: |t, s| broker(&t.url(), s),
    start: |t| t.restart().expect("start"),
);

/// Names with the characters AMQP names and routing keys make special.
fn odd_names() -> OddNames<'static> {
    OddNames {
        namespace: "names.*/ y#%",
        rooms: &["a.b", "with space", "général 🎉", "", "#", "r.x", "x\ny"],
        user: "ü.*/#",
        member: "ü x",
        node: "n.1",
        node_id: "n.1 %",
    }
}
