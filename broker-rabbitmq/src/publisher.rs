//! [`Publisher`]: one confirm-mode channel that stores records in the order
//! they were handed to it, so a node's records keep its call order (a
//! presence join before the heartbeat that follows it) while callers wait
//! for their confirms concurrently.

use chatmesh_broker::BrokerError;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::debug;

use crate::error::{timed_out, unavailable};
use crate::link::REQUEST_TIMEOUT;

/// How many records may wait for the channel: beyond it a publish fails at
/// once with `Unavailable` rather than queueing without bound.
const QUEUE: usize = 16 * 1024;

/// One record to publish.
struct Job {
    exchange: String,
    key: String,
    payload: Vec<u8>,
    properties: BasicProperties,
    /// `mandatory`: a record no queue takes is an error (a stream that is
    /// gone), not silently dropped.
    mandatory: bool,
    done: oneshot::Sender<Result<(), BrokerError>>,
}

/// A record handed to the publisher; [`Queued::confirmed`] waits for it.
pub(crate) struct Queued(oneshot::Receiver<Result<(), BrokerError>>);

impl Queued {
    /// Waits until RabbitMQ confirmed the record (stored it, for a stream).
    pub(crate) async fn confirmed(self) -> Result<(), BrokerError> {
        match tokio::time::timeout(REQUEST_TIMEOUT, self.0).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(BrokerError::Unavailable(
                "publish: the RabbitMQ link went down".into(),
            )),
            Err(_) => Err(timed_out("publish")),
        }
    }
}

/// See the module docs.
pub(crate) struct Publisher {
    jobs: mpsc::Sender<Job>,
    task: JoinHandle<()>,
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Publisher {
    /// Opens the channel on `conn`.
    pub(crate) async fn open(conn: &Connection) -> Result<Publisher, BrokerError> {
        let channel = conn
            .create_channel()
            .await
            .map_err(|e| unavailable("open a channel", e))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| unavailable("confirm.select", e))?;
        let (jobs, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(run(channel, rx));
        Ok(Publisher { jobs, task })
    }

    /// Hands a record over without waiting: records handed over one after
    /// the other are stored in that order.
    pub(crate) fn enqueue(
        &self,
        exchange: &str,
        key: &str,
        payload: Vec<u8>,
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<Queued, BrokerError> {
        let (done, rx) = oneshot::channel();
        let job = Job {
            exchange: exchange.to_owned(),
            key: key.to_owned(),
            payload,
            properties,
            mandatory,
            done,
        };
        self.jobs.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                BrokerError::Unavailable("publish: too many records wait for RabbitMQ".into())
            }
            mpsc::error::TrySendError::Closed(_) => {
                BrokerError::Unavailable("publish: the RabbitMQ channel is closed".into())
            }
        })?;
        Ok(Queued(rx))
    }

    /// False once the channel failed: the session must be set up again.
    pub(crate) fn is_alive(&self) -> bool {
        !self.task.is_finished()
    }
}

/// Publishes jobs in order; each confirm is awaited by its own task.
async fn run(channel: Channel, mut jobs: mpsc::Receiver<Job>) {
    while let Some(job) = jobs.recv().await {
        let options = BasicPublishOptions {
            mandatory: job.mandatory,
            ..BasicPublishOptions::default()
        };
        let sent = channel
            .basic_publish(
                job.exchange.as_str().into(),
                job.key.as_str().into(),
                options,
                &job.payload,
                job.properties,
            )
            .await;
        match sent {
            Ok(confirm) => {
                let done = job.done;
                let key = job.key;
                tokio::spawn(async move {
                    let _ = done.send(answer(confirm.await, &key));
                });
            }
            Err(e) => {
                debug!(cause = %e, "publish failed; the channel is closed");
                let _ = job.done.send(Err(unavailable("publish", e)));
                return;
            }
        }
    }
}

fn answer(confirm: lapin::Result<Confirmation>, key: &str) -> Result<(), BrokerError> {
    match confirm {
        Ok(Confirmation::Ack(None)) | Ok(Confirmation::NotRequested) => Ok(()),
        Ok(Confirmation::Ack(Some(_))) => Err(BrokerError::Unavailable(
            format!("publish: RabbitMQ has no queue for {key} (deleted?)").into(),
        )),
        Ok(Confirmation::Nack(_)) => Err(BrokerError::Unavailable(
            format!("publish: RabbitMQ refused the record for {key}").into(),
        )),
        Err(e) => Err(unavailable("publish", e)),
    }
}
