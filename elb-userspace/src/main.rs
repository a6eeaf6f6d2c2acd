mod detach;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use clap::Parser;
use elb_userspace::{
    access_log::{self, AccessLog},
    admin::{AdminApi, access::AccessPolicy},
    cli::{Cli, Command, L4Start, RunArgs, TeardownArgs},
    config::{ConfigManager, ConfigService, KeyLayout, OwnAddrs},
    dataplane::{self, DataplaneConfig, PinLayout, XdpDataplane},
    discovery::leader::{self, DiscoveryGate, ElectionSettings},
    health::monitor::spawn_monitor,
    instance_lock::{InstanceLock, LockError},
    l4::{
        fallback::{FallbackSettings, L4Userspace},
        ifaddrs::interface_addresses,
        maps::{L4Maps, StatsMaps},
        stats::XdpStats,
        sync::{L4Sync, spawn_sync_loop},
    },
    limits::{self, Budgets, ClientLimit, UpstreamLimits},
    metrics::{self, Metrics},
    proxy::{Proxy, ProxySettings, via::HopMarker},
    sd_notify,
    server::{self, ServerSettings},
    statsd::StatsdClient,
    store::{EtcdStore, FileStore, Store, etcd::parse_endpoints},
    sync,
    takeover::{self, HandoverSockets, SocketKind, TakeoverServer, TakeoverStart},
    targets::TargetRegistry,
    tls::UpstreamTls,
};
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

mod allocator;

fn main() -> std::process::ExitCode {
    // Before the heap grows: the pages elb touches from here on are small.
    let thp = allocator::disable_transparent_huge_pages();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    if let Err(err) = thp {
        tracing::warn!(error = %err, "cannot turn transparent huge pages off: RSS may be larger and step up after bursts");
    }
    let cli = Cli::parse();
    // Blocking and short: no runtime, and its own exit statuses.
    if let Command::Status(args) = &cli.command {
        return elb_userspace::status::command::run(args);
    }
    // Before any thread exists: the child is this same command line.
    if let Command::Run(args) = &cli.command
        && args.detach
    {
        return detach::run_detached();
    }
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
        .and_then(|runtime| {
            runtime.block_on(async {
                match cli.command {
                    Command::Run(args) => run(*args).await,
                    Command::Teardown(args) => teardown(&args),
                    Command::Status(_) => Ok(()),
                    Command::Aws(command) => aws_lookup(command).await,
                }
            })
        });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // `{:#}` prints the whole cause chain on one line, no backtrace.
            eprintln!("elb: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `elb aws ...`: one look-up, printed as JSON on standard output.
async fn aws_lookup(command: elb_userspace::cli::AwsCommand) -> anyhow::Result<()> {
    use elb_userspace::{aws, cli::AwsCommand};
    let json = match command {
        AwsCommand::AsgInstances { group, region } => {
            let clients = aws::AwsClients::load(region.as_deref()).await;
            let members = aws::asg_instances(&clients, &group).await?;
            serde_json::Value::Array(
                members
                    .iter()
                    .map(|m| {
                        serde_json::json!({"instance_id": m.instance_id,
                            "private_ip": m.private_ip.to_string(),
                            "ipv6": m.ipv6.map(|ip| ip.to_string()), "zone": m.zone})
                    })
                    .collect(),
            )
        }
        AwsCommand::Ec2Instances { ids, region } => {
            let clients = aws::AwsClients::load(region.as_deref()).await;
            let instances = aws::describe_instances(&clients.ec2, &ids).await?;
            serde_json::Value::Array(
                instances
                    .iter()
                    .map(|i| {
                        serde_json::json!({"instance_id": i.instance_id,
                            "private_ip": i.private_ip.map(|ip| ip.to_string()),
                            "ipv6": i.ipv6.map(|ip| ip.to_string()), "zone": i.zone,
                            "state": i.state})
                    })
                    .collect(),
            )
        }
    };
    println!("{json}");
    Ok(())
}

/// This process's instance lock; with `--takeover` and an elb running, the
/// lock and sockets it handed over.
fn acquire_or_take_over(
    args: &RunArgs,
) -> anyhow::Result<(InstanceLock, Option<takeover::Handover>)> {
    match InstanceLock::acquire(&args.run_dir, &args.name) {
        Ok(lock) => {
            if args.takeover {
                tracing::info!(
                    name = args.name,
                    "--takeover: no elb of this name runs; starting"
                );
            }
            Ok((lock, None))
        }
        Err(LockError::Held { holder, .. }) if args.takeover => {
            let path = takeover::socket_path(&args.run_dir, &args.name);
            tracing::info!(pid = holder, socket = %path.display(), "taking over from the running elb");
            match takeover::request(&path) {
                Ok(handover) => {
                    let lock = InstanceLock::inherited(handover.lock.try_clone()?);
                    Ok((lock, Some(handover)))
                }
                // It may have exited between the lock and the connect.
                Err(error @ takeover::TakeoverError::Connect { .. }) => {
                    match InstanceLock::acquire(&args.run_dir, &args.name) {
                        Ok(lock) => {
                            tracing::info!("the running elb has exited meanwhile; starting");
                            Ok((lock, None))
                        }
                        Err(_) => Err(error.into()),
                    }
                }
                Err(error) => Err(error.into()),
            }
        }
        Err(error) => Err(error.into()),
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let l4_start = args.l4_start()?;
    // Read before anything starts: a bad file stops elb here.
    let aws_api_credentials = match &args.aws_api_credentials {
        Some(path) => Some(elb_userspace::aws::api::credentials::Credentials::load(
            path,
        )?),
        None => None,
    };
    let (lock, mut handover) = acquire_or_take_over(&args)?;
    let sockets = HandoverSockets {
        registry: takeover::SocketRegistry::default(),
        inherited: handover
            .as_mut()
            .map(|h| Arc::new(std::mem::take(&mut h.inherited))),
    };
    let budgets = fd_budgets(&args);
    let upstream_limits = UpstreamLimits::new(args.max_server_connections, budgets.upstream_total);
    let upstream_tls = Arc::new(UpstreamTls::load(args.upstream_ca.as_deref())?);
    let layout = KeyLayout::new(&args.name);
    let state_file = args.state_file();
    // Left by a kill between a write and its rename; the lock above means
    // no other elb of this name is writing.
    elb_userspace::store::file::remove_stale_temp_files(&state_file);
    let targets = Arc::new(TargetRegistry::new(args.zone.clone()));
    // Bound before the configuration loads, so that the load already knows
    // elb's own addresses (a server that is one of them would loop).
    let workers = args
        .workers
        .or_else(|| std::thread::available_parallelism().ok())
        .map_or(1, std::num::NonZeroUsize::get);
    let listeners = server::Listeners::open(&args.listen, workers, &sockets)?;
    let listen_addrs = listeners.local_addrs()?;
    let _static_handover = listeners.register(&sockets, SocketKind::Listen, None);
    let own_addrs = OwnAddrs::new(listen_addrs.clone());

    let manager = ConfigManager::with_targets(layout.clone(), Arc::clone(&targets))
        .with_own_addrs(own_addrs)
        .with_upstream_limits(Arc::clone(&upstream_limits));
    let identity = leader::node_identity(listen_addrs.first().copied());
    // With etcd, one node runs the discovery providers: the election starts
    // once the shutdown signal exists (below).
    let mut election = None;
    let config = match &args.etcd {
        Some(endpoints) => {
            let access = &args.etcd_access;
            let endpoints = parse_endpoints(endpoints, access.tls()).map_err(anyhow::Error::msg)?;
            election = Some(ElectionSettings {
                endpoints: endpoints.clone(),
                access: access.clone(),
                name: leader::election_name(&args.name),
                identity: identity.clone(),
                lease_ttl: args.discovery_lease_ttl,
            });
            let etcd = EtcdStore::connect(&endpoints, layout.prefix(), access).await?;
            let config = ConfigService::new(
                manager,
                Store::Etcd(Box::new(etcd.clone())),
                Some(state_file.clone()),
            );
            sync::start(Arc::clone(&config), etcd, &state_file, handover.is_some()).await?;
            config
        }
        None => {
            let (store, kv) = FileStore::open(state_file.clone())?;
            let config = ConfigService::new(manager, Store::File(store), None);
            config.replace_from_store(kv, 0).await;
            config
        }
    };
    tracing::info!(store = config.store().describe(), "configuration store");

    let statsd = match &args.statsd {
        Some(target) => Some(StatsdClient::start(target, &args.name).await?),
        None => None,
    };

    let access_log = match &args.access_log {
        Some(target) => Some(AccessLog::start(
            access_log::Target::parse(target),
            args.access_log_format,
        )?),
        None => None,
    };

    let xdp = start_xdp(&args, l4_start)?;

    let access = AccessPolicy {
        allow: args.admin_allow.clone(),
        token: args.admin_token.clone(),
    };
    let metrics = Arc::new(Metrics::new(
        Arc::clone(config.snapshot()),
        Arc::clone(&targets),
        Arc::clone(config.control()),
        Arc::clone(&upstream_limits),
    ));
    if let Some(addr) = args.metrics {
        let bound =
            metrics::http::listen(addr, &sockets, Arc::clone(&metrics), access.clone()).await?;
        tracing::info!(addr = %bound, "serving Prometheus metrics on /metrics");
    }
    let admin = Arc::new(
        AdminApi::new(Arc::clone(&config), access, args.admin_max_body).with_metrics(metrics),
    );
    let proxy_settings = ProxySettings {
        connect_timeout: args.connect_timeout,
        response_timeout: args.upstream_timeout,
        client_body_timeout: args.client_body_timeout,
        max_idle_per_server: 256,
        idle_timeout: std::time::Duration::from_secs(60),
        hop: HopMarker::new(&args.name)?,
        upstream_limits,
        upstream_tls: Arc::clone(&upstream_tls),
    };
    let server_settings = ServerSettings {
        header_read_timeout: args.header_timeout,
        max_header_bytes: args.max_header_bytes,
        max_headers: args.max_headers,
        clients: ClientLimit::new(budgets.clients),
        drain_timeout: args.drain_timeout,
    };
    for addr in &listen_addrs {
        tracing::info!(%addr, workers, "listening for HTTP");
    }
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    // `discovery.may_run` is the gate the discovery runner takes: true only
    // while this node may run the providers.
    let discovery = match election {
        Some(settings) => DiscoveryGate::elect(settings, shutdown_rx.clone())
            .context("starting the discovery election")?,
        None => {
            tracing::info!("embedded store: this node runs the discovery providers (no election)");
            DiscoveryGate::standalone(identity, shutdown_rx.clone())
        }
    };
    admin.set_discovery_leader(discovery.status.clone());
    let monitor = spawn_monitor(Arc::clone(&targets), upstream_tls, shutdown_rx.clone())
        .context("starting the health-check thread")?;
    // XDP: the maps are written only once the old elb (if any) has
    // stopped writing them, after this one serves (below).
    let (xdp, userspace_l4) = match xdp {
        Some(xdp) => (Some(xdp), None),
        None => {
            tracing::warn!("L4 data plane: userspace");
            let l4 = L4Userspace::start(
                config.snapshot().clone(),
                config.subscribe(),
                targets.subscribe(),
                FallbackSettings::new(args.connect_timeout).with_handover(sockets.clone()),
                shutdown_rx.clone(),
            )
            .await;
            admin.set_l4_stats(Arc::new(l4.stats()));
            admin.set_l4_applied(l4.applied());
            (None, Some(l4))
        }
    };
    // The providers run while the election's gate is open: always with the
    // embedded store, on the elected node only with etcd (whose commits are
    // fenced by its leader key).
    let discovery_runner = elb_userspace::discovery::runner::spawn(
        elb_userspace::discovery::runner::Runner {
            config: Arc::clone(&config),
            board: admin.discovery_board(),
            write_gate: admin.write_gate(),
            fence: discovery.fence.clone(),
        },
        discovery.may_run.clone(),
        shutdown_rx.clone(),
    );
    let snapshot = config.snapshot().clone();
    let guard = userspace_l4.as_ref().map(L4Userspace::listener_guard);
    let workers = server::spawn_workers(
        listeners,
        || {
            Proxy::new(
                snapshot.clone(),
                Arc::clone(&admin),
                statsd.clone(),
                proxy_settings.clone(),
            )
            .with_access_log(access_log.clone())
        },
        &server_settings,
        guard.as_ref(),
        &targets.subscribe(),
        &shutdown_rx,
    )?;
    let board = server::ListenerBoard::default();
    admin.set_listener_board(board.clone());
    if let (Some(addr), Some(credentials)) = (args.aws_api, aws_api_credentials) {
        let keys = credentials.len();
        let clients = elb_userspace::aws::AwsClients::load(None).await;
        let api = Arc::new(elb_userspace::aws::api::AwsApi::new(
            Arc::clone(&config),
            credentials,
            clients.ec2,
            addr.ip(),
            Some(board.clone()),
            Arc::clone(&admin),
        ));
        let bound = api.listen(addr, &sockets).await?;
        tracing::info!(addr = %bound, keys, "serving the AWS ELB API");
    }
    let generation = *config.subscribe().borrow();
    let supervisor = server::spawn_supervisor(
        config.snapshot().clone(),
        config.subscribe(),
        workers.control,
        board.clone(),
        sockets.clone(),
        shutdown_rx.clone(),
    );
    // The configured listeners take their received sockets in the
    // supervisor's first pass; what is left, nothing uses any more.
    if let Some(inherited) = &sockets.inherited {
        if !board
            .wait_applied(generation, Duration::from_secs(10))
            .await
        {
            tracing::warn!("configured listeners not all opened within 10 s");
        }
        inherited.close_unclaimed();
    }
    let mut signals = ShutdownSignals::install()?;
    if let Some(handover) = handover {
        let old = complete_takeover(handover, &lock).await?;
        tracing::info!(
            old_pid = old,
            "takeover complete: this elb serves; the old one drains and exits"
        );
    }
    let map_writer = Arc::new(tokio::sync::Mutex::new(()));
    let l4 = match (xdp, userspace_l4) {
        (Some((mut dataplane, maps)), _) => {
            let routes = dataplane.spawn_route_watch(maps.generations()?, shutdown_rx.clone())?;
            let ports: Vec<u16> = listen_addrs.iter().map(SocketAddr::port).collect();
            let sync = start_l4_sync(
                maps,
                &dataplane,
                &ports,
                &config,
                &targets,
                &admin,
                &shutdown_rx,
                Arc::clone(&map_writer),
            )?;
            L4Running::Xdp {
                dataplane,
                sync,
                routes,
            }
        }
        (None, Some(l4)) => L4Running::Userspace(l4),
        (None, None) => anyhow::bail!("no L4 data plane started"),
    };
    let (taken_over_tx, mut taken_over) = tokio::sync::mpsc::unbounded_channel();
    let takeover_server = TakeoverServer::start(
        takeover::socket_path(&args.run_dir, &args.name),
        takeover::Offer {
            registry: sockets.registry.clone(),
            lock: lock.duplicate()?,
            map_writer: matches!(l4, L4Running::Xdp { .. }).then(|| Arc::clone(&map_writer)),
            admin_writes: admin.write_gate(),
            runtime: tokio::runtime::Handle::current(),
        },
        taken_over_tx,
    )
    .inspect_err(|error| {
        // Serving matters more than a later takeover: say so and go on.
        tracing::error!(
            %error,
            "cannot open the takeover socket: `elb run --takeover` cannot take over from this \
             elb (stop it instead)"
        );
    })
    .ok();
    record_admin_address(&args, &listen_addrs);
    tracing::info!(name = args.name, "elb running");
    report_ready();

    let taken_over = tokio::select! {
        () = signals.next() => None,
        start = taken_over.recv() => start,
    };
    if let Some(server) = &takeover_server {
        server.close();
    }
    sockets.registry.close();
    match taken_over {
        Some(TakeoverStart { pid }) => {
            tracing::info!(
                new_pid = pid,
                drain_timeout = ?args.drain_timeout,
                "taken over: no new connections here (the new elb accepts them); requests in \
                 flight finish (a SIGTERM exits now)"
            );
            if matches!(l4, L4Running::Userspace(_)) {
                tracing::warn!(
                    "not handed over: established L4 userspace TCP connections and UDP sessions \
                     end with this process (new ones go to the new elb)"
                );
            }
        }
        None => tracing::info!(
            drain_timeout = ?args.drain_timeout,
            "shutting down: no new connections; requests in flight finish (a second SIGTERM exits now)"
        ),
    }
    let _ = shutdown_tx.send(true);
    let stopped = async {
        // The runner stops its providers, and the leader resigns at once
        // on shutdown; wait until both have.
        let _ = discovery_runner.await;
        let _ = discovery.task.await;
        let _ = supervisor.await;
        // Worker threads end once their connections have drained.
        let _ = tokio::task::spawn_blocking(move || {
            for worker in workers.threads {
                let _ = worker.join();
            }
            let _ = monitor.join();
        })
        .await;
        match l4 {
            L4Running::Xdp {
                dataplane,
                sync,
                routes,
            } => {
                let _ = sync.await;
                let _ = routes.await;
                dataplane.release(&args.name);
            }
            L4Running::Userspace(l4) => l4.wait().await,
        }
    };
    elb_userspace::run_record::RunRecord::remove_own(&args.run_dir, &args.name);
    tokio::select! {
        () = stopped => {
            tracing::info!("stopped");
            Ok(())
        }
        () = signals.next() => {
            tracing::warn!("second signal: exiting now, connections still open are cut");
            // Not a return: the runtime would wait for the blocked joins.
            std::process::exit(0);
        }
    }
}

/// Tells `elb status` where the admin API answers (the first `--listen`
/// address). Not fatal: elb serves without it.
fn record_admin_address(args: &RunArgs, listen_addrs: &[SocketAddr]) {
    let Some(first) = listen_addrs.first() else {
        return;
    };
    let record = elb_userspace::run_record::RunRecord {
        pid: std::process::id(),
        admin: elb_userspace::run_record::local_admin_address(*first),
        bpffs: args.bpffs.clone(),
    };
    if let Err(error) = record.write(&args.run_dir, &args.name) {
        tracing::warn!(%error, "`elb status` will not find this elb");
    }
}

/// Tells the old elb this one serves, and systemd that this one is now the
/// main process, before the old one may exit.
async fn complete_takeover(
    handover: takeover::Handover,
    lock: &InstanceLock,
) -> anyhow::Result<u32> {
    let (handover, confirmed) = tokio::task::spawn_blocking(move || {
        let confirmed = handover.serving();
        (handover, confirmed)
    })
    .await
    .context("takeover task")?;
    let old = confirmed.context("the old elb did not confirm that it stops")?;
    let main_pid = format!("MAINPID={}", std::process::id());
    if let Err(error) = sd_notify::notify(&main_pid) {
        tracing::warn!(%error, "cannot tell systemd the new main process");
    }
    if let Err(error) = lock.write_pid() {
        tracing::warn!(%error, "cannot write this pid into the lock file");
    }
    // Closing the connection lets the old one drain.
    drop(handover);
    Ok(old)
}

/// Serving: tells systemd (Type=notify) and a detached parent.
fn report_ready() {
    if let Err(error) = sd_notify::notify("READY=1") {
        tracing::warn!(%error, "cannot tell systemd that elb is ready");
    }
    detach::report_ready();
}

/// Raises the fd limit and splits it into the connection budgets.
fn fd_budgets(args: &RunArgs) -> Budgets {
    let fd_limit = match limits::fd::raise_nofile() {
        Ok(limit) => {
            tracing::info!(
                soft = limit.now,
                was = limit.before,
                hard = limit.hard,
                "file descriptor limit (RLIMIT_NOFILE)"
            );
            limit.now
        }
        Err(error) => {
            // getrlimit does not fail on Linux; assume the usual default.
            tracing::warn!(%error, "cannot read or raise RLIMIT_NOFILE; assuming 1024");
            1024
        }
    };
    let budgets = Budgets::for_fd_limit(fd_limit, args.max_connections.map(|n| n.get()));
    tracing::info!(
        max_connections = budgets.clients,
        upstream_connections = budgets.upstream_total,
        max_server_connections = args.max_server_connections,
        "connection limits"
    );
    if budgets.upstream_total < budgets.clients {
        tracing::warn!(
            fd_limit,
            max_connections = budgets.clients,
            upstream_connections = budgets.upstream_total,
            "--max-connections leaves fewer upstream connections than client ones: requests \
             beyond them get 503 (raise the hard fd limit or lower --max-connections)"
        );
    }
    budgets
}

/// The L4 data plane in use.
enum L4Running {
    Xdp {
        dataplane: XdpDataplane,
        sync: tokio::task::JoinHandle<()>,
        routes: tokio::task::JoinHandle<()>,
    },
    Userspace(L4Userspace),
}

/// Starts XDP when asked for; None means L4 runs in userspace. In `auto`
/// mode a failure of the host (privileges, BPF, driver) falls back loudly,
/// while an operator mistake stays fatal.
fn start_xdp(args: &RunArgs, l4_start: L4Start) -> anyhow::Result<Option<(XdpDataplane, L4Maps)>> {
    match l4_start {
        L4Start::Userspace { requested: false } => {
            tracing::warn!(
                "no --xdp-iface: L4 services run in userspace, a TCP/UDP proxy on each VIP \
                 (give --xdp-iface to balance them in XDP)"
            );
            Ok(None)
        }
        L4Start::Userspace { requested: true } => Ok(None),
        L4Start::XdpRequired | L4Start::XdpOrUserspace => {
            let started = XdpDataplane::start(&DataplaneConfig {
                name: args.name.clone(),
                bpffs_root: args.bpffs.clone(),
                interfaces: args.xdp_ifaces.clone(),
                mode: args.xdp_mode,
                tables: dataplane::TableSizes {
                    flows: args.conn_table_size,
                    embryos: args.embryonic_table_size,
                },
                nat_ports: args.nat_ports,
            });
            match started {
                Ok(started) => Ok(Some(started)),
                Err(error) if l4_start == L4Start::XdpOrUserspace && error.allows_fallback() => {
                    let error = anyhow::Error::new(error);
                    tracing::error!(
                        "cannot start the XDP data plane: {error:#}; L4 services are now served \
                         by the userspace proxy (--l4-dataplane xdp makes this fatal)"
                    );
                    Ok(None)
                }
                Err(error) => Err(error.into()),
            }
        }
    }
}

/// Fills the XDP maps' per-host entries and starts following the
/// configuration; `/__erulb__/stats` then reads the pinned counters.
#[allow(clippy::too_many_arguments)] // the parts it wires together
fn start_l4_sync(
    maps: L4Maps,
    dataplane: &XdpDataplane,
    l7_ports: &[u16],
    config: &ConfigService,
    targets: &Arc<TargetRegistry>,
    admin: &AdminApi,
    shutdown: &tokio::sync::watch::Receiver<bool>,
    map_writer: Arc<tokio::sync::Mutex<()>>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut sync = L4Sync::new(maps)?.with_targets(Arc::clone(targets));
    for (ifindex, addrs) in interface_addresses()? {
        sync.maps_mut().set_iface_addrs(ifindex, &addrs)?;
    }
    sync.set_static_l7_ports(l7_ports)?;
    let interfaces = dataplane
        .interfaces()
        .iter()
        .map(|(name, how)| (name.clone(), how.to_string()))
        .collect();
    let stats = XdpStats::new(
        StatsMaps::open_pinned(dataplane.pins())?,
        sync.stats_index(),
        interfaces,
    );
    admin.set_l4_stats(Arc::new(stats));
    let exhaustion = tokio::spawn(elb_userspace::l4::exhaustion::watch(
        StatsMaps::open_pinned(dataplane.pins())?,
        sync.stats_index(),
        shutdown.clone(),
    ));
    tracing::info!("L4 data plane: xdp");
    let (sync_task, applied) = spawn_sync_loop(
        sync,
        config.snapshot().clone(),
        config.subscribe(),
        targets.subscribe(),
        shutdown.clone(),
        map_writer,
    );
    admin.set_l4_applied(applied);
    // One handle for both: each stops on `shutdown`.
    Ok(tokio::spawn(async move {
        let _ = sync_task.await;
        let _ = exhaustion.await;
    }))
}

/// Removes what a stopped elb left running in the kernel.
fn teardown(args: &TeardownArgs) -> anyhow::Result<()> {
    let _lock = InstanceLock::acquire(&args.run_dir, &args.name)
        .context("elb teardown needs the elb of this name stopped")?;
    let layout = PinLayout::new(&args.bpffs, &args.name);
    let report = dataplane::teardown(&layout)?;
    for interface in &report.detached {
        tracing::info!(interface, "XDP program detached");
    }
    if report.detached.is_empty() && report.maps_removed == 0 {
        tracing::info!(dir = %layout.dir().display(), "nothing pinned: nothing to tear down");
    } else {
        tracing::info!(
            maps = report.maps_removed,
            dir = %layout.dir().display(),
            "pinned maps removed"
        );
    }
    Ok(())
}

/// SIGTERM and SIGINT: the first starts the drain, a second exits.
struct ShutdownSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn install() -> anyhow::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
            terminate: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}
