//! The embedded Kafka-protocol broker (tansu), for `wfm up` and the tests:
//! one command brings up a real broker that every component reaches over the
//! network, exactly as it would reach an external cluster.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tansu_broker::broker::Broker;
use tansu_storage::StorageContainer;
use tokio::task::JoinHandle;
use tracing::{error, info};
use url::Url;

mod group;
mod memory_log;
mod records;
mod store;

use group::GroupCoordinator;
use store::Store;

const NODE_ID: i32 = 1;
const CLUSTER_ID: &str = "wfm";

#[derive(Debug, Clone)]
pub enum Storage {
    /// Lost when the broker stops: tests and `--ephemeral`.
    Memory,
    /// A SQLite database in this directory: survives restarts.
    Sqlite(PathBuf),
}

impl Storage {
    fn url(&self) -> anyhow::Result<Url> {
        Ok(match self {
            Storage::Memory => Url::parse("memory://tansu/")?,
            Storage::Sqlite(dir) => {
                std::fs::create_dir_all(dir)?;
                let absolute = std::path::absolute(dir)?.join("tansu.db");
                // tansu joins the URL's path onto the working directory; a path
                // that is still absolute after its first slash is stripped
                // replaces it, so `sqlite:////abs/path` names the file exactly.
                Url::parse(&format!("sqlite:///{}", absolute.display()))?
            }
        })
    }
}

/// Threads of the broker's own runtime.
const BROKER_THREADS: usize = 2;

pub struct EmbeddedBroker {
    addr: SocketAddr,
    /// The broker runs on a runtime of its own, as if it were on another host:
    /// a client call that blocks a thread of the components' runtime (librdkafka
    /// closes and commits synchronously) must never starve the broker it waits for.
    runtime: Option<tokio::runtime::Runtime>,
}

impl EmbeddedBroker {
    /// Starts the broker listening on `addr` and returns once it accepts connections.
    pub async fn start(addr: SocketAddr, storage: Storage) -> anyhow::Result<Self> {
        anyhow::ensure!(
            addr.is_ipv4(),
            "the embedded broker advertises IPv4 only; {addr} is not"
        );
        // Another broker on the address would answer our readiness probe and
        // the components would silently use it.
        std::net::TcpListener::bind(addr).map_err(|e| {
            anyhow::anyhow!(
                "the embedded broker cannot listen on {addr}: {e} (is another wfm or broker running? \
                 choose another address with --broker-addr or WFM_BROKER_ADDR)"
            )
        })?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(BROKER_THREADS)
            .thread_name("broker")
            .enable_all()
            .build()?;
        let serving = serve(addr, storage.clone());
        let mut task = runtime.spawn(async move {
            let served = serving.await;
            if let Err(e) = &served {
                error!(error = %e, "embedded broker stopped");
            }
            served
        });
        wait_until_listening(addr, &mut task).await?;
        info!(%addr, ?storage, "embedded broker listening");
        Ok(Self {
            addr,
            runtime: Some(runtime),
        })
    }
}

/// Serves the broker until it fails; runs on the broker's own runtime.
async fn serve(addr: SocketAddr, storage: Storage) -> anyhow::Result<()> {
    let url = Url::parse(&format!("tcp://{addr}"))?;
    let storage_container = StorageContainer::builder()
        .cluster_id(CLUSTER_ID)
        .node_id(NODE_ID)
        .advertised_listener(url.clone())
        .storage(storage.url()?)
        .silent(true)
        .build()
        .await
        .map_err(|e| anyhow::anyhow!("embedded broker storage: {e}"))?;
    let store = match storage {
        Storage::Memory => Store::ephemeral(storage_container),
        Storage::Sqlite(_) => Store::durable(storage_container),
    };
    let groups = GroupCoordinator::new(store.clone())
        .map_err(|e| anyhow::anyhow!("embedded broker groups: {e}"))?;
    tokio::spawn(groups.publisher());
    let mut broker = Broker::new(
        NODE_ID,
        CLUSTER_ID,
        url.clone(),
        url,
        store,
        groups,
        uuid::Uuid::now_v7(),
    )
    .silent(true);
    broker
        .serve(tokio::time::Instant::now())
        .await
        .map_err(|e| anyhow::anyhow!("embedded broker stopped: {e}"))
}

impl EmbeddedBroker {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Bootstrap servers string for clients.
    pub fn bootstrap(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Dropping a runtime waits for its tasks, which may not be done from async code.
            runtime.shutdown_background();
        }
    }
}

async fn wait_until_listening(
    addr: SocketAddr,
    task: &mut JoinHandle<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    for _ in 0..200 {
        if task.is_finished() {
            return Err(match task.await {
                Ok(Err(e)) => e.context(format!("embedded broker on {addr} exited at start")),
                _ => anyhow::anyhow!("embedded broker on {addr} exited at start"),
            });
        }
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    anyhow::bail!("embedded broker did not listen on {addr} within 5 s")
}

/// The default data directory layout: the broker's database under `data_dir/broker`.
pub fn broker_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("broker")
}
