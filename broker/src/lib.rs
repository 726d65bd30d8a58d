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

use group::GroupCoordinator;

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

pub struct EmbeddedBroker {
    addr: SocketAddr,
    task: JoinHandle<()>,
    group_publisher: JoinHandle<()>,
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
        let groups = GroupCoordinator::new(storage_container.clone())
            .map_err(|e| anyhow::anyhow!("embedded broker groups: {e}"))?;
        let group_publisher = tokio::spawn(groups.publisher());
        let mut broker = Broker::new(
            NODE_ID,
            CLUSTER_ID,
            url.clone(),
            url,
            storage_container,
            groups,
            uuid::Uuid::now_v7(),
        )
        .silent(true);
        let task = tokio::spawn(async move {
            if let Err(e) = broker.serve(tokio::time::Instant::now()).await {
                error!(error = %e, "embedded broker stopped");
            }
        });
        wait_until_listening(addr, &task).await?;
        info!(%addr, ?storage, "embedded broker listening");
        Ok(Self {
            addr,
            task,
            group_publisher,
        })
    }

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
        self.task.abort();
        self.group_publisher.abort();
    }
}

async fn wait_until_listening(addr: SocketAddr, task: &JoinHandle<()>) -> anyhow::Result<()> {
    for _ in 0..200 {
        if task.is_finished() {
            anyhow::bail!("embedded broker exited at start (is {addr} already in use?)");
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
