//! The Docker engine driver: everything the agent asks of the engine, through bollard.
//!
//! Every container the agent creates carries labels tying it to its task (`pier.task`,
//! `pier.service`, `pier.revision`) and to the agent's node (`pier.node`), plus any extra
//! labels the agent was configured with (tests add `pier.test=1` and a per-test label). The
//! driver only ever lists, adopts or removes containers carrying the node label *and* every
//! extra label, so two agents on one engine (or a test beside a running `pier dev`) never
//! touch each other's containers.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody, ExecConfig, HostConfig, HostConfigLogConfig, Ipam, IpamConfig,
    NetworkCreateRequest, PortBinding,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, EventsOptions, KillContainerOptions,
    ListContainersOptions, LogsOptions, RemoveContainerOptions, RestartContainerOptions,
    StopContainerOptions,
};
use bollard::Docker;
use futures::{Stream, StreamExt};

pub const LABEL_TASK: &str = "pier.task";
pub const LABEL_SERVICE: &str = "pier.service";
pub const LABEL_REVISION: &str = "pier.revision";
pub const LABEL_NODE: &str = "pier.node";
/// On the networks the agent creates.
pub const LABEL_NETWORK: &str = "pier.network";
/// On the named volumes the agent creates: the volume's name in service files.
pub const LABEL_VOLUME: &str = "pier.volume";

/// Most processes (threads included) one container may run: a fork bomb stays inside it.
pub const PIDS_LIMIT: i64 = 2048;
/// Docker's json-file log of a container is capped at this size per file ...
pub const LOG_MAX_SIZE: &str = "10m";
/// ... and this many files (what `pier logs` can still show).
pub const LOG_MAX_FILES: &str = "3";

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("cannot reach the Docker engine: {0}; is dockerd running and is /var/run/docker.sock (or DOCKER_HOST) reachable?")]
    Unavailable(String),
    #[error("image {image} not found: {detail}")]
    ImageNotFound { image: String, detail: String },
    #[error("cannot pull image {image}: {detail}")]
    Pull { image: String, detail: String },
    #[error("no such container {0}")]
    NoSuchContainer(String),
    #[error("Docker engine refused to {op}: {detail}")]
    Engine { op: String, detail: String },
}

impl DockerError {
    fn engine(op: &str, err: bollard::errors::Error) -> DockerError {
        match err {
            bollard::errors::Error::DockerResponseServerError {
                status_code: 404,
                message,
            } => DockerError::NoSuchContainer(message),
            bollard::errors::Error::DockerResponseServerError { message, .. } => {
                DockerError::Engine {
                    op: op.to_string(),
                    detail: message,
                }
            }
            other if is_connection_error(&other) => DockerError::Unavailable(other.to_string()),
            other => DockerError::Engine {
                op: op.to_string(),
                detail: other.to_string(),
            },
        }
    }
}

fn is_connection_error(err: &bollard::errors::Error) -> bool {
    matches!(
        err,
        bollard::errors::Error::HyperResponseError { .. }
            | bollard::errors::Error::IOError { .. }
            | bollard::errors::Error::RequestTimeoutError
            | bollard::errors::Error::SocketNotFoundError(_)
    )
}

/// What to run for one task (internal; built by the agent from the task's revision).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerSpec {
    pub task_id: String,
    pub service: String,
    pub revision: u64,
    pub image: String,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    pub ports: Vec<u16>,
    /// Host address the ports are published on.
    pub host_ip: String,
    pub cpu_millis: u64,
    pub memory_mb: u64,
    pub stop_signal: String,
    /// The pier network the container joins (None: Docker's default bridge).
    pub network: Option<String>,
    /// Resolvers of the container (Docker's `Dns`); empty: the engine's default.
    pub dns: Vec<String>,
    pub user: Option<String>,
    pub read_only_root: bool,
    pub cap_drop: Vec<String>,
    /// Bind mounts, `host-or-volume:container[:ro]` (a task's secrets directory, named
    /// volumes, host paths).
    pub binds: Vec<String>,
    /// tmpfs mounts: container path → options (`size=64m`).
    pub tmpfs: BTreeMap<String, String>,
}

/// A managed container as the engine reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub task_id: String,
    pub service: String,
    pub revision: u64,
    pub running: bool,
    /// Engine state: created, running, exited, dead, ...
    pub status: String,
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
    pub error: Option<String>,
    /// Container port → host port (known once started).
    pub host_ports: BTreeMap<u16, u16>,
    /// The host address those ports are published on (None when it publishes none).
    pub ports_host_ip: Option<String>,
    /// The container's address on the driver's pier network.
    pub network_ip: Option<String>,
}

impl ContainerInfo {
    /// Its ports are published on a host address other than `host_ip` (the agent's address
    /// changed since it was started, e.g. from the old 127.0.0.1 default): other machines
    /// could not reach what the catalog would advertise for it.
    pub fn published_elsewhere(&self, host_ip: &str) -> bool {
        self.ports_host_ip
            .as_deref()
            .is_some_and(|ip| !ip.is_empty() && ip != "0.0.0.0" && ip != host_ip)
    }
}

/// A container event of interest to the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerEvent {
    pub container_id: String,
    pub task_id: Option<String>,
    /// Engine action: start, die, oom, kill, destroy, health_status ...
    pub action: String,
}

/// The node's pier network as the engine has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PierNetwork {
    pub id: String,
    /// The bridge's (the host's) address on it.
    pub gateway: Option<std::net::Ipv4Addr>,
}

#[derive(Clone)]
pub struct DockerDriver {
    docker: Docker,
    node: String,
    extra_labels: BTreeMap<String, String>,
    network: Option<String>,
}

impl DockerDriver {
    /// Connects to the local engine (DOCKER_HOST or the default socket) and negotiates the API
    /// version, so the same binary works against an engine of API 1.41 or newer.
    pub async fn connect(
        node: &str,
        extra_labels: BTreeMap<String, String>,
    ) -> Result<DockerDriver, DockerError> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(|e| DockerError::Unavailable(e.to_string()))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| DockerError::Unavailable(e.to_string()))?;
        Ok(DockerDriver {
            docker,
            node: node.to_string(),
            extra_labels,
            network: None,
        })
    }

    /// The pier network whose container addresses [`DockerDriver::inspect`] reports.
    pub fn with_network(mut self, network: Option<String>) -> DockerDriver {
        self.network = network;
        self
    }

    /// Makes sure the bridge network `name` exists (creating it, labelled, when it does not)
    /// and returns it with its gateway address: the host's address on that bridge, which the
    /// node's gateway and DNS listen on. Idempotent: called on every start and before every
    /// container, so a network removed by hand comes back. Two agents that create it at once
    /// on one engine (Docker allows equal names) converge: the network with the smallest id
    /// is kept and the others are removed.
    pub async fn ensure_network(&self, name: &str) -> Result<PierNetwork, DockerError> {
        let mut found = self.networks_named(name).await?;
        if found.is_empty() {
            let created = self.create_network(name).await;
            found = self.networks_named(name).await?;
            // Another agent may have won the race (the engine then refuses ours, e.g. for
            // the bridge name): what counts is that the network exists now.
            if found.is_empty() {
                created?;
            }
        }
        for extra in found.iter().skip(1) {
            tracing::info!(network = %name, id = %extra.id, "removing a duplicate pier network");
            let _ = self.docker.remove_network(&extra.id).await;
        }
        let first = found
            .into_iter()
            .next()
            .ok_or_else(|| DockerError::Engine {
                op: "create a network".into(),
                detail: format!("network {name} is missing right after its creation"),
            })?;
        match first.gateway {
            Some(_) => Ok(first),
            None => Err(DockerError::Engine {
                op: "use a network".into(),
                detail: format!("network {name} has no IPv4 gateway"),
            }),
        }
    }

    async fn create_network(&self, name: &str) -> Result<(), DockerError> {
        let mut labels: HashMap<String, String> = self.extra_labels.clone().into_iter().collect();
        labels.insert(LABEL_NETWORK.into(), "1".into());
        let mut options = HashMap::new();
        if name.len() <= 15 {
            // The host interface gets the network's name (`pier0`), easy to find in `ip addr`.
            options.insert("com.docker.network.bridge.name".into(), name.to_string());
        }
        let request = NetworkCreateRequest {
            name: name.to_string(),
            driver: Some("bridge".into()),
            labels: Some(labels),
            options: Some(options),
            ..Default::default()
        };
        match self.docker.create_network(request).await {
            Ok(_) => {
                tracing::info!(network = %name, "created the pier network");
                Ok(())
            }
            // Created meanwhile by another agent on this engine; fine.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) => Ok(()),
            Err(e) => Err(DockerError::engine("create a network", e)),
        }
    }

    /// The networks called exactly `name`, smallest id first.
    async fn networks_named(&self, name: &str) -> Result<Vec<PierNetwork>, DockerError> {
        let options = bollard::query_parameters::ListNetworksOptions {
            filters: Some(HashMap::from([(
                "name".to_string(),
                vec![name.to_string()],
            )])),
        };
        let list = self
            .docker
            .list_networks(Some(options))
            .await
            .map_err(|e| DockerError::engine("list networks", e))?;
        let mut out: Vec<PierNetwork> = list
            .into_iter()
            .filter(|n| n.name.as_deref() == Some(name))
            .filter_map(|n| {
                Some(PierNetwork {
                    gateway: ipv4_gateway(n.ipam.as_ref()),
                    id: n.id?,
                })
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// The engine's name of named volume `name` of this node: `pier-<node>-<name>` (two
    /// agents on one engine never share one).
    pub fn volume_name(&self, name: &str) -> String {
        format!("pier-{}-{name}", self.node)
    }

    /// Creates named volume `name` (labelled as this node's) unless it exists; returns the
    /// engine's name of it. Its data outlives every container.
    pub async fn ensure_volume(&self, name: &str) -> Result<String, DockerError> {
        let engine_name = self.volume_name(name);
        let mut labels: HashMap<String, String> = self.ownership_labels().into_iter().collect();
        labels.insert(LABEL_VOLUME.into(), name.to_string());
        let request = bollard::models::VolumeCreateRequest {
            name: Some(engine_name.clone()),
            labels: Some(labels),
            ..Default::default()
        };
        // Creating an existing volume returns it unchanged.
        self.docker
            .create_volume(request)
            .await
            .map_err(|e| DockerError::engine("create a volume", e))?;
        Ok(engine_name)
    }

    /// The named volumes this node holds (their names in service files), sorted.
    pub async fn list_volumes(&self) -> Result<Vec<String>, DockerError> {
        let options = bollard::query_parameters::ListVolumesOptions {
            filters: Some(self.label_filters()),
        };
        let list = self
            .docker
            .list_volumes(Some(options))
            .await
            .map_err(|e| DockerError::engine("list volumes", e))?;
        let mut out: Vec<String> = list
            .volumes
            .unwrap_or_default()
            .into_iter()
            .filter_map(|v| v.labels.get(LABEL_VOLUME).cloned())
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Removes named volume `name` of this node; the engine refuses while a container uses it.
    pub async fn remove_volume(&self, name: &str) -> Result<(), DockerError> {
        self.docker
            .remove_volume(
                &self.volume_name(name),
                None::<bollard::query_parameters::RemoveVolumeOptions>,
            )
            .await
            .map_err(|e| DockerError::engine("remove a volume", e))
    }

    /// The labels that mark a container as this agent's.
    pub fn ownership_labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.extra_labels.clone();
        labels.insert(LABEL_NODE.to_string(), self.node.clone());
        labels
    }

    fn label_filters(&self) -> HashMap<String, Vec<String>> {
        let labels: Vec<String> = self
            .ownership_labels()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        HashMap::from([("label".to_string(), labels)])
    }

    /// CPU (millicores) and memory (MiB) of the engine's host.
    pub async fn capacity(&self) -> Result<(u64, u64), DockerError> {
        let info = self
            .docker
            .info()
            .await
            .map_err(|e| DockerError::engine("read system info", e))?;
        let cpus = info.ncpu.unwrap_or(1).max(1) as u64;
        let mem_mb = (info.mem_total.unwrap_or(0).max(0) as u64) / (1024 * 1024);
        Ok((cpus * 1000, mem_mb))
    }

    pub async fn image_present(&self, image: &str) -> Result<bool, DockerError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(false),
            Err(e) => Err(DockerError::engine("inspect an image", e)),
        }
    }

    /// Pulls `image` (`repo:tag` or `repo@digest`). The pier registry on 127.0.0.1 is plain
    /// HTTP, which the engine allows for loopback registries without configuration.
    pub async fn pull(&self, image: &str) -> Result<(), DockerError> {
        let (from_image, tag) = split_reference(image);
        let options = CreateImageOptions {
            from_image: Some(from_image),
            tag,
            ..Default::default()
        };
        let mut stream = self.docker.create_image(Some(options), None, None);
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(err) = info.error_detail.and_then(|d| d.message) {
                        return Err(classify_pull_error(image, err));
                    }
                }
                Err(bollard::errors::Error::DockerResponseServerError { message, .. }) => {
                    return Err(classify_pull_error(image, message));
                }
                Err(bollard::errors::Error::DockerStreamError { error }) => {
                    return Err(classify_pull_error(image, error));
                }
                Err(e) if is_connection_error(&e) => {
                    return Err(DockerError::Unavailable(e.to_string()))
                }
                Err(e) => {
                    return Err(DockerError::Pull {
                        image: image.to_string(),
                        detail: e.to_string(),
                    })
                }
            }
        }
        Ok(())
    }

    /// Creates the task's container (`pier-<task id>`). If a container of that name already
    /// exists and is ours, it is returned instead: creating twice never runs a task twice.
    pub async fn create(&self, spec: &ContainerSpec) -> Result<String, DockerError> {
        let name = container_name(&spec.task_id);
        let mut labels: HashMap<String, String> = self.ownership_labels().into_iter().collect();
        labels.insert(LABEL_TASK.into(), spec.task_id.clone());
        labels.insert(LABEL_SERVICE.into(), spec.service.clone());
        labels.insert(LABEL_REVISION.into(), spec.revision.to_string());
        let mut port_bindings = HashMap::new();
        for port in &spec.ports {
            // An empty host port asks the engine for a free ephemeral port at start.
            port_bindings.insert(
                format!("{port}/tcp"),
                Some(vec![PortBinding {
                    host_ip: Some(spec.host_ip.clone()),
                    host_port: Some(String::new()),
                }]),
            );
        }
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            entrypoint: spec.entrypoint.clone(),
            cmd: spec.cmd.clone(),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            exposed_ports: Some(spec.ports.iter().map(|p| format!("{p}/tcp")).collect()),
            labels: Some(labels),
            stop_signal: Some(spec.stop_signal.clone()),
            user: spec.user.clone(),
            host_config: Some(host_config(spec, port_bindings)),
            ..Default::default()
        };
        let options = CreateContainerOptions {
            name: Some(name.clone()),
            ..Default::default()
        };
        match self.docker.create_container(Some(options), body).await {
            Ok(resp) => Ok(resp.id),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409,
                message,
            }) => match self.inspect(&name).await? {
                Some(info) if info.task_id == spec.task_id => Ok(info.id),
                _ => Err(DockerError::Engine {
                    op: "create a container".into(),
                    detail: message,
                }),
            },
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404,
                message,
            }) => Err(DockerError::ImageNotFound {
                image: spec.image.clone(),
                detail: message,
            }),
            Err(e) => Err(DockerError::engine("create a container", e)),
        }
    }

    pub async fn start(&self, id: &str) -> Result<(), DockerError> {
        match self
            .docker
            .start_container(id, None::<bollard::query_parameters::StartContainerOptions>)
            .await
        {
            Ok(()) => Ok(()),
            // 304: already started (an adopted or retried start).
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(DockerError::engine("start a container", e)),
        }
    }

    /// Sends the container's stop signal (set at create), then SIGKILL after `timeout_ms`.
    /// Returns once the container has exited.
    pub async fn stop(&self, id: &str, timeout_ms: u64) -> Result<(), DockerError> {
        let t = i32::try_from(timeout_ms.div_ceil(1000)).unwrap_or(i32::MAX);
        let options = StopContainerOptions {
            t: Some(t),
            signal: None,
        };
        match self.docker.stop_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(DockerError::engine("stop a container", e)),
        }
    }

    /// Restarts the container in place: its stop signal, SIGKILL after `timeout_ms`, then
    /// start (a rendered file changed and the program reads it only at start).
    pub async fn restart(&self, id: &str, timeout_ms: u64) -> Result<(), DockerError> {
        let t = i32::try_from(timeout_ms.div_ceil(1000)).unwrap_or(i32::MAX);
        let options = RestartContainerOptions {
            t: Some(t),
            signal: None,
        };
        self.docker
            .restart_container(id, Some(options))
            .await
            .map_err(|e| DockerError::engine("restart a container", e))
    }

    /// Sends `signal` (e.g. "SIGHUP") to the container's main process.
    pub async fn signal(&self, id: &str, signal: &str) -> Result<(), DockerError> {
        let options = KillContainerOptions {
            signal: signal.to_string(),
        };
        self.docker
            .kill_container(id, Some(options))
            .await
            .map_err(|e| DockerError::engine("signal a container", e))
    }

    /// Removes the container (forcefully: a running one is killed). Absent is fine.
    pub async fn remove(&self, id: &str) -> Result<(), DockerError> {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            link: false,
        };
        match self.docker.remove_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            // 409: removal already in progress.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) => Ok(()),
            Err(e) => Err(DockerError::engine("remove a container", e)),
        }
    }

    /// The container's current state, or `None` when it does not exist or is not ours.
    /// Whether the engine has a container called `name`, whoever's it is.
    pub async fn container_exists(&self, name: &str) -> Result<bool, DockerError> {
        match self
            .docker
            .inspect_container(
                name,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(false),
            Err(e) => Err(DockerError::engine("inspect a container", e)),
        }
    }

    pub async fn inspect(&self, id: &str) -> Result<Option<ContainerInfo>, DockerError> {
        let resp = match self
            .docker
            .inspect_container(
                id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
        {
            Ok(r) => r,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => return Ok(None),
            Err(e) => return Err(DockerError::engine("inspect a container", e)),
        };
        let labels = resp
            .config
            .as_ref()
            .and_then(|c| c.labels.clone())
            .unwrap_or_default();
        if !self.owns(&labels) {
            return Ok(None);
        }
        let state = resp.state.clone().unwrap_or_default();
        let mut host_ports = BTreeMap::new();
        let mut ports_host_ip = None;
        if let Some(ports) = resp.network_settings.as_ref().and_then(|n| n.ports.clone()) {
            for (key, bindings) in ports {
                let Some(container_port) =
                    key.split('/').next().and_then(|p| p.parse::<u16>().ok())
                else {
                    continue;
                };
                let binding = bindings.unwrap_or_default().into_iter().find_map(|b| {
                    let port = b.host_port.and_then(|p| p.parse::<u16>().ok())?;
                    Some((port, b.host_ip.unwrap_or_default()))
                });
                if let Some((hp, ip)) = binding {
                    host_ports.insert(container_port, hp);
                    ports_host_ip.get_or_insert(ip);
                }
            }
        }
        Ok(Some(ContainerInfo {
            id: resp.id.clone().unwrap_or_default(),
            name: resp
                .name
                .clone()
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            task_id: labels.get(LABEL_TASK).cloned().unwrap_or_default(),
            service: labels.get(LABEL_SERVICE).cloned().unwrap_or_default(),
            revision: labels
                .get(LABEL_REVISION)
                .and_then(|r| r.parse().ok())
                .unwrap_or(0),
            running: state.running.unwrap_or(false),
            status: state.status.map(|s| s.to_string()).unwrap_or_default(),
            exit_code: state.exit_code,
            oom_killed: state.oom_killed.unwrap_or(false),
            error: state.error.filter(|e| !e.is_empty()),
            host_ports,
            ports_host_ip,
            network_ip: self.network.as_ref().and_then(|n| {
                resp.network_settings
                    .as_ref()?
                    .networks
                    .as_ref()?
                    .get(n)?
                    .ip_address
                    .clone()
                    .filter(|ip| !ip.is_empty())
            }),
        }))
    }

    fn owns(&self, labels: &HashMap<String, String>) -> bool {
        self.ownership_labels()
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    }

    /// Every container of this agent (running or not), inspected.
    pub async fn list_managed(&self) -> Result<Vec<ContainerInfo>, DockerError> {
        let options = ListContainersOptions {
            all: true,
            filters: Some(self.label_filters()),
            ..Default::default()
        };
        let list = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| DockerError::engine("list containers", e))?;
        let mut out = Vec::new();
        for summary in list {
            let Some(id) = summary.id else { continue };
            if let Some(info) = self.inspect(&id).await? {
                out.push(info);
            }
        }
        Ok(out)
    }

    /// Container events of this agent's containers, from the current second on.
    pub fn events(
        &self,
    ) -> impl Stream<Item = Result<ContainerEvent, DockerError>> + Send + 'static {
        let mut filters = self.label_filters();
        filters.insert("type".into(), vec!["container".into()]);
        // The request is sent on first poll; `since` covers events between this call and then
        // (the engine replays from that second), so nothing is missed in the gap.
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs().to_string())
            .ok();
        let options = EventsOptions {
            filters: Some(filters),
            since,
            ..Default::default()
        };
        self.docker.events(Some(options)).map(|item| match item {
            Ok(msg) => {
                let actor = msg.actor.unwrap_or_default();
                let attrs = actor.attributes.unwrap_or_default();
                Ok(ContainerEvent {
                    container_id: actor.id.unwrap_or_default(),
                    task_id: attrs.get(LABEL_TASK).cloned(),
                    action: msg.action.unwrap_or_default(),
                })
            }
            Err(e) => Err(DockerError::engine("stream events", e)),
        })
    }

    /// The container's output (stdout and stderr interleaved), the last `tail` lines, then
    /// new lines as they come when `follow`.
    pub fn logs(
        &self,
        id: &str,
        follow: bool,
        tail: Option<u32>,
    ) -> impl Stream<Item = Result<bytes::Bytes, DockerError>> + Send + 'static {
        let options = LogsOptions {
            follow,
            stdout: true,
            stderr: true,
            tail: tail.map(|t| t.to_string()).unwrap_or_else(|| "all".into()),
            ..Default::default()
        };
        self.docker.logs(id, Some(options)).map(|item| match item {
            Ok(out) => Ok(out.into_bytes()),
            Err(e) => Err(DockerError::engine("read logs", e)),
        })
    }

    /// Runs `argv` inside the container and returns its exit code, or `None` on timeout.
    pub async fn exec(
        &self,
        id: &str,
        argv: &[String],
        timeout: Duration,
    ) -> Result<Option<i64>, DockerError> {
        let config = ExecConfig {
            cmd: Some(argv.to_vec()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            ..Default::default()
        };
        let created = self
            .docker
            .create_exec(id, config)
            .await
            .map_err(|e| DockerError::engine("exec in a container", e))?;
        let run = async {
            let started = self
                .docker
                .start_exec(&created.id, None::<bollard::exec::StartExecOptions>)
                .await
                .map_err(|e| DockerError::engine("exec in a container", e))?;
            if let bollard::exec::StartExecResults::Attached { mut output, .. } = started {
                while output.next().await.is_some() {}
            }
            let inspected = self
                .docker
                .inspect_exec(&created.id)
                .await
                .map_err(|e| DockerError::engine("inspect an exec", e))?;
            Ok::<_, DockerError>(inspected.exit_code)
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(result) => result,
            Err(_) => Ok(None),
        }
    }
}

/// The engine settings of a task's container: limits, the hardening pier applies to every
/// task, its network and resolvers.
fn host_config(
    spec: &ContainerSpec,
    port_bindings: HashMap<String, Option<Vec<PortBinding>>>,
) -> HostConfig {
    HostConfig {
        port_bindings: Some(port_bindings),
        nano_cpus: Some((spec.cpu_millis as i64).saturating_mul(1_000_000)),
        memory: Some((spec.memory_mb as i64).saturating_mul(1024 * 1024)),
        // An init process as PID 1 forwards the stop signal and reaps zombies: a
        // program that is PID 1 itself ignores SIGTERM unless it installs a handler,
        // which would turn every stop into a wait for SIGKILL.
        init: Some(true),
        // setuid binaries cannot raise privileges inside the container.
        security_opt: Some(vec!["no-new-privileges".into()]),
        pids_limit: Some(PIDS_LIMIT),
        log_config: Some(HostConfigLogConfig {
            typ: Some("json-file".into()),
            config: Some(HashMap::from([
                ("max-size".to_string(), LOG_MAX_SIZE.to_string()),
                ("max-file".to_string(), LOG_MAX_FILES.to_string()),
            ])),
        }),
        readonly_rootfs: spec.read_only_root.then_some(true),
        cap_drop: (!spec.cap_drop.is_empty()).then(|| spec.cap_drop.clone()),
        network_mode: spec.network.clone(),
        dns: (!spec.dns.is_empty()).then(|| spec.dns.clone()),
        binds: (!spec.binds.is_empty()).then(|| spec.binds.clone()),
        tmpfs: (!spec.tmpfs.is_empty()).then(|| spec.tmpfs.clone().into_iter().collect()),
        ..Default::default()
    }
}

/// The first IPv4 gateway of a network's address configuration; without an explicit one,
/// the first address of its first IPv4 subnet (what Docker assigns to the bridge).
fn ipv4_gateway(ipam: Option<&Ipam>) -> Option<std::net::Ipv4Addr> {
    let configs: &[IpamConfig] = ipam?.config.as_deref()?;
    let explicit = configs
        .iter()
        .filter_map(|c| c.gateway.as_deref()?.parse::<std::net::Ipv4Addr>().ok())
        .next();
    explicit.or_else(|| {
        configs.iter().find_map(|c| {
            let (net, _) = c.subnet.as_deref()?.split_once('/')?;
            let base: std::net::Ipv4Addr = net.parse().ok()?;
            Some(std::net::Ipv4Addr::from(u32::from(base).checked_add(1)?))
        })
    })
}

pub fn container_name(task_id: &str) -> String {
    format!("pier-{task_id}")
}

/// `host:5000/repo:tag` → (`host:5000/repo`, `tag`); digests stay whole.
fn split_reference(image: &str) -> (String, Option<String>) {
    if image.contains('@') {
        return (image.to_string(), None);
    }
    let last_slash = image.rfind('/').map(|i| i + 1).unwrap_or(0);
    match image[last_slash..].rfind(':') {
        Some(i) => {
            let at = last_slash + i;
            (image[..at].to_string(), Some(image[at + 1..].to_string()))
        }
        None => (image.to_string(), Some("latest".to_string())),
    }
}

fn classify_pull_error(image: &str, detail: String) -> DockerError {
    let lower = detail.to_ascii_lowercase();
    if lower.contains("not found")
        || lower.contains("manifest unknown")
        || lower.contains("does not exist")
    {
        DockerError::ImageNotFound {
            image: image.to_string(),
            detail,
        }
    } else {
        DockerError::Pull {
            image: image.to_string(),
            detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_gateway_is_the_explicit_one_or_the_subnets_first_address() {
        let cfg = |subnet: &str, gateway: Option<&str>| IpamConfig {
            subnet: Some(subnet.into()),
            gateway: gateway.map(str::to_string),
            ..Default::default()
        };
        let ipam = |configs: Vec<IpamConfig>| Ipam {
            config: Some(configs),
            ..Default::default()
        };
        assert_eq!(
            ipv4_gateway(Some(&ipam(vec![
                cfg("fd00::/64", Some("fd00::1")),
                cfg("172.20.0.0/16", Some("172.20.0.1"))
            ]))),
            Some("172.20.0.1".parse().unwrap())
        );
        assert_eq!(
            ipv4_gateway(Some(&ipam(vec![cfg("10.9.0.0/24", None)]))),
            Some("10.9.0.1".parse().unwrap())
        );
        assert_eq!(ipv4_gateway(None), None);
    }

    #[test]
    fn every_container_is_hardened() {
        let spec = ContainerSpec {
            task_id: "t".into(),
            service: "s".into(),
            revision: 1,
            image: "i".into(),
            entrypoint: None,
            cmd: None,
            env: BTreeMap::new(),
            ports: vec![],
            host_ip: "127.0.0.1".into(),
            cpu_millis: 100,
            memory_mb: 64,
            stop_signal: "SIGTERM".into(),
            network: Some("pier0".into()),
            dns: vec!["172.20.0.1".into()],
            user: None,
            read_only_root: true,
            cap_drop: vec!["ALL".into()],
            binds: vec![],
            tmpfs: BTreeMap::new(),
        };
        let hc = host_config(&spec, HashMap::new());
        assert_eq!(hc.security_opt, Some(vec!["no-new-privileges".to_string()]));
        assert_eq!(hc.pids_limit, Some(PIDS_LIMIT));
        let log = hc.log_config.unwrap();
        assert_eq!(log.typ.as_deref(), Some("json-file"));
        assert_eq!(log.config.unwrap()["max-size"], LOG_MAX_SIZE);
        assert_eq!(hc.readonly_rootfs, Some(true));
        assert_eq!(hc.cap_drop, Some(vec!["ALL".to_string()]));
        assert_eq!(hc.network_mode.as_deref(), Some("pier0"));
        assert_eq!(hc.dns, Some(vec!["172.20.0.1".to_string()]));
    }

    #[test]
    fn references() {
        assert_eq!(
            split_reference("127.0.0.1:5000/hello:v1"),
            ("127.0.0.1:5000/hello".into(), Some("v1".into()))
        );
        assert_eq!(
            split_reference("127.0.0.1:5000/hello"),
            ("127.0.0.1:5000/hello".into(), Some("latest".into()))
        );
        assert_eq!(
            split_reference("busybox"),
            ("busybox".into(), Some("latest".into()))
        );
        assert_eq!(
            split_reference("r/x@sha256:ab"),
            ("r/x@sha256:ab".into(), None)
        );
    }
}
