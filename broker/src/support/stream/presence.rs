//! [`LogPresence`]: the [`Presence`](crate::Presence) calls of a broker whose presence is a
//! control partition ([`super::ControlLog`]), given how it writes a control
//! record and reads the book ([`ControlWriter`]).

use async_trait::async_trait;

use crate::support::LocalPresence;
use crate::{BrokerError, NodeInfo};

use super::{beats, Book, Control};

/// How a broker writes control records.
#[async_trait]
pub trait ControlWriter: Send + Sync {
    /// A record handed to the writer.
    type Queued: Send;

    /// Hands a record to the writer without waiting: records handed over
    /// one after the other are stored in that order.
    fn enqueue(&self, record: &Control) -> Result<Self::Queued, BrokerError>;

    /// Waits until a join or leave is stored and this node's reader applied
    /// it, and announces the presence change it caused, if any.
    async fn settle(&self, queued: Self::Queued) -> Result<(), BrokerError>;

    /// Waits until a record is stored.
    async fn confirm(&self, queued: Self::Queued) -> Result<(), BrokerError>;

    /// `f` of the presence book, read after everything written to the
    /// control partition so far.
    async fn book<T, F>(&self, f: F) -> Result<T, BrokerError>
    where
        T: Send,
        F: Fn(&Book) -> T + Send + Sync;
}

/// See the module docs: this node's entries and the calls that write them.
#[derive(Default)]
pub struct LogPresence {
    local: LocalPresence,
}

impl LogPresence {
    pub async fn join<W: ControlWriter>(
        &self,
        writer: &W,
        room: &str,
        user: &str,
        node: &str,
    ) -> Result<(), BrokerError> {
        let record = Control::Join {
            node: node.into(),
            room: room.into(),
            user: user.into(),
        };
        // Handed over under the presence lock (so this node's control
        // records keep its order), waited for after it: joins do not queue
        // behind each other's round trips.
        self.local
            .join_queued(
                room,
                user,
                node,
                |_| writer.enqueue(&record),
                |queued| writer.settle(queued),
            )
            .await
    }

    pub async fn leave<W: ControlWriter>(
        &self,
        writer: &W,
        room: &str,
        user: &str,
        node: &str,
    ) -> Result<(), BrokerError> {
        let record = Control::Leave {
            node: node.into(),
            room: room.into(),
            user: user.into(),
        };
        // Gone locally whatever the broker says: the next heartbeat's entries
        // replace this node's, which removes it if this write fails.
        self.local
            .leave_queued(
                room,
                user,
                node,
                || writer.enqueue(&record),
                |queued| writer.settle(queued),
            )
            .await
    }

    pub async fn heartbeat<W: ControlWriter>(
        &self,
        writer: &W,
        info: &NodeInfo,
    ) -> Result<(), BrokerError> {
        // Handed over under the presence lock, so a join or leave is never
        // undone by an older copy of the entries; confirmed after it.
        let queued: Vec<_> = {
            let local = self.local.lock().await;
            beats(info, &local)
                .iter()
                .map(|record| writer.enqueue(record))
                .collect::<Result<_, _>>()?
        };
        for q in queued {
            writer.confirm(q).await?;
        }
        Ok(())
    }

    /// The users present in `room`, after everything written so far.
    pub async fn users<W: ControlWriter>(
        &self,
        writer: &W,
        room: &str,
    ) -> Result<Vec<String>, BrokerError> {
        writer.book(|b| b.users(room)).await
    }

    /// The live nodes, after everything written so far.
    pub async fn nodes<W: ControlWriter>(&self, writer: &W) -> Result<Vec<NodeInfo>, BrokerError> {
        writer.book(|b| b.nodes()).await
    }
}
