use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use elb_userspace::{
    admin::{AdminApi, access::AccessPolicy},
    cli::{Cli, Command, RunArgs},
    config::{ConfigManager, ConfigService, KeyLayout},
    dataplane::{DataplaneConfig, XdpDataplane},
    instance_lock::InstanceLock,
    l4::{
        ifaddrs::interface_addresses,
        sync::{L4Sync, spawn_sync_loop},
    },
    proxy::{Proxy, ProxySettings},
    server::{self, ServerSettings},
    statsd::StatsdClient,
    store::{EtcdStore, FileStore, Store, etcd::parse_endpoints},
    sync,
};
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

// Many small, short-lived allocations per request (headers, bodies):
// mimalloc handles them with less contention than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
        .and_then(|runtime| {
            runtime.block_on(async {
                match cli.command {
                    Command::Run(args) => run(*args).await,
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

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let _lock = InstanceLock::acquire(&args.run_dir, &args.name)?;
    let layout = KeyLayout::new(&args.name);
    let state_file = args.state_file();

    let config = match &args.etcd {
        Some(endpoints) => {
            let endpoints = parse_endpoints(endpoints).map_err(anyhow::Error::msg)?;
            let etcd = EtcdStore::connect(&endpoints, layout.prefix()).await?;
            let config = ConfigService::new(
                ConfigManager::new(layout),
                Store::Etcd(Box::new(etcd.clone())),
                Some(state_file.clone()),
            );
            sync::start(Arc::clone(&config), etcd, &state_file).await?;
            config
        }
        None => {
            let (store, kv) = FileStore::open(state_file.clone())?;
            let config = ConfigService::new(ConfigManager::new(layout), Store::File(store), None);
            config.replace_from_store(kv, 0).await;
            config
        }
    };
    tracing::info!(store = config.store().describe(), "configuration store");

    let statsd = match &args.statsd {
        Some(target) => Some(StatsdClient::start(target, &args.name).await?),
        None => None,
    };

    let dataplane = if args.xdp_ifaces.is_empty() {
        None
    } else {
        Some(XdpDataplane::start(&DataplaneConfig {
            name: args.name.clone(),
            bpffs_root: args.bpffs.clone(),
            interfaces: args.xdp_ifaces.clone(),
            mode: args.xdp_mode,
        })?)
    };

    let admin = Arc::new(AdminApi::new(
        Arc::clone(&config),
        AccessPolicy {
            allow: args.admin_allow.clone(),
            token: args.admin_token.clone(),
        },
        args.admin_max_body,
    ));
    let proxy_settings = ProxySettings {
        connect_timeout: args.connect_timeout,
        response_timeout: args.upstream_timeout,
        max_idle_per_server: 256,
        idle_timeout: std::time::Duration::from_secs(60),
    };
    let server_settings = ServerSettings {
        header_read_timeout: args.header_timeout,
        max_header_bytes: args.max_header_bytes,
        max_headers: args.max_headers,
    };
    let listeners = server::bind_all(&args.listen)?;
    for listener in &listeners {
        tracing::info!(addr = %listener.local_addr()?, "listening for HTTP");
    }
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let mut dataplane = dataplane;
    let l4_sync_task = match dataplane.as_mut().and_then(XdpDataplane::take_l4_maps) {
        Some(maps) => {
            let mut sync = L4Sync::new(maps)?;
            for (ifindex, addrs) in interface_addresses()? {
                sync.maps_mut().set_iface_addrs(ifindex, &addrs)?;
            }
            let ports: Vec<u16> = listeners
                .iter()
                .map(|l| l.local_addr().map(|a| a.port()))
                .collect::<Result<_, _>>()?;
            sync.maps_mut().set_l7_ports(&ports)?;
            tracing::info!("L4 data plane: XDP");
            Some(spawn_sync_loop(
                sync,
                config.snapshot().clone(),
                shutdown_rx.clone(),
            ))
        }
        None => None,
    };
    let workers = args
        .workers
        .or_else(|| std::thread::available_parallelism().ok())
        .map_or(1, std::num::NonZeroUsize::get);
    let snapshot = config.snapshot().clone();
    let worker_threads = server::spawn_workers(
        workers,
        &listeners,
        || {
            Proxy::new(
                snapshot.clone(),
                Arc::clone(&admin),
                statsd.clone(),
                proxy_settings.clone(),
            )
        },
        &server_settings,
        &shutdown_rx,
    )?;
    tracing::info!(name = args.name, "elb running");

    wait_for_shutdown_signal().await?;
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    for worker in worker_threads {
        let _ = worker.join();
    }
    if let Some(task) = l4_sync_task {
        let _ = task.await;
    }
    if let Some(dataplane) = dataplane {
        dataplane.shutdown()?;
    }
    Ok(())
}

async fn wait_for_shutdown_signal() -> anyhow::Result<()> {
    let mut interrupt = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    Ok(())
}
