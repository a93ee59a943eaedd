//! A pod whose VFs the Kubernetes device plugin allocated
//! (`kata-sriov-k8s device-plugin`): Kata cold-plugs them itself (from
//! PodResources and CDI), so the shim claims nothing and adds no device node; it only
//! writes the guest annotation, matching the pod annotation's entries
//! (`io.kata-sriov.networks`, passed through containerd's
//! `pod_annotations`) to the pod's VFs.
//!
//! The node agent records each VF's pod (`namespace/name`, from the
//! kubelet's PodResources) in its lease right after Allocate; the shim
//! finds them through the engine by the sandbox's CRI namespace and name.
//! While some device plugin VF has no pod recorded yet (it may be this
//! pod's), it waits, at most [`WAIT`]; when no such VF exists it returns at
//! once, so a pod without device plugin VFs pays one ledger read.
//!
//! Matching: per pool, the entries in their order take the pod's VFs of
//! that pool in PCI address order; VFs left over get an entry without
//! addresses; more entries than VFs, or a MAC that differs from the VF's,
//! is an error (nothing is changed).

use std::time::{Duration, Instant};

use slog::{info, Logger};

use kata_sriov::engine::claim::{ClaimError, Engine};
use kata_sriov::guestnet::{validate_guest_networks, GuestNetError, GuestNetwork};
use kata_sriov::oci::spec::{Spec, SpecError};
use kata_sriov::policy::request::NetworkRequest;
use kata_sriov::state::ledger::Lease;

/// The CRI annotations naming the pod of a sandbox.
pub const CRI_SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
pub const CRI_SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
/// Longest wait for the node agent to record the pod's VFs.
pub const WAIT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum DevicePluginError {
    #[error("reading the device plugin's VFs")]
    Engine(#[source] Box<ClaimError>),
    #[error("pod {pod}: {asked} network(s) asked from pool {pool:?}, but the device plugin gave the pod {held} VF(s) of it (ask for as many of the pool's resource, e.g. kata-sriov.io/{pool}, in the pod's limits)")]
    Count {
        pod: String,
        pool: String,
        asked: usize,
        held: usize,
    },
    #[error("pod {pod}: the entry for {vf} asks for MAC {asked}, but the VF has {has:?} (the device plugin claimed it before the pod's annotation is read)")]
    Mac {
        pod: String,
        vf: kata_sriov::pci::PciAddress,
        asked: String,
        has: Option<String>,
    },
    #[error("pod {pod}")]
    Guest {
        pod: String,
        #[source]
        source: GuestNetError,
    },
    #[error("pod {pod}: writing the guest annotation")]
    Spec {
        pod: String,
        #[source]
        source: SpecError,
    },
}

/// At a CRI sandbox's start: when the device plugin gave its pod VFs,
/// `spec` with their guest annotation (the caller writes it and hands
/// over to the delegate). Ok(None): not such a pod, nothing to do.
pub fn edit(
    engine: &Engine<'_>,
    spec: &Spec,
    requests: &[NetworkRequest],
    log: &Logger,
) -> Result<Option<Spec>, DevicePluginError> {
    let Some(pod) = pod_of(spec) else {
        return Ok(None);
    };
    let leases = pod_leases(engine, &pod, WAIT)?;
    if leases.is_empty() {
        return Ok(None);
    }
    let nets = guest_networks(&pod, requests, &leases)?;
    let edited = with_guest_annotation(spec, &pod, &nets)?;
    let vfs: Vec<String> = leases.iter().map(|l| l.vf.to_string()).collect();
    info!(log, "start: the device plugin's VFs of the pod, guest annotation written";
        "pod" => &pod, "vfs" => vfs.join(", "));
    Ok(Some(edited))
}

/// The pod (`namespace/name`) a CRI sandbox spec names; None when it is
/// not one.
pub fn pod_of(spec: &Spec) -> Option<String> {
    let a = spec.annotations();
    let ns = a.get(CRI_SANDBOX_NAMESPACE)?.as_str()?;
    let name = a.get(CRI_SANDBOX_NAME)?.as_str()?;
    (!ns.is_empty() && !name.is_empty()).then(|| format!("{ns}/{name}"))
}

/// The device plugin VFs recorded for `pod`, waiting up to `wait` while
/// some VF has no pod recorded yet; empty: the pod has none.
pub fn pod_leases(
    engine: &Engine<'_>,
    pod: &str,
    wait: Duration,
) -> Result<Vec<Lease>, DevicePluginError> {
    let start = Instant::now();
    loop {
        let (mine, unknown) = engine
            .device_plugin_leases(pod)
            .map_err(|e| DevicePluginError::Engine(Box::new(e)))?;
        if !mine.is_empty() || unknown == 0 || start.elapsed() >= wait {
            return Ok(mine);
        }
        std::thread::sleep(POLL);
    }
}

/// The guest description of `leases` (the pod's VFs) given the pod's
/// requests.
pub fn guest_networks(
    pod: &str,
    requests: &[NetworkRequest],
    leases: &[Lease],
) -> Result<Vec<GuestNetwork>, DevicePluginError> {
    let mut vfs: Vec<&Lease> = leases.iter().collect();
    vfs.sort_by_key(|l| (l.pool.clone(), l.vf));
    let mut used = vec![false; vfs.len()];
    let mut out: Vec<(kata_sriov::pci::PciAddress, GuestNetwork)> = Vec::new();
    for r in requests {
        let slot = vfs
            .iter()
            .enumerate()
            .find(|(i, l)| !used[*i] && l.pool == r.pool.as_str())
            .map(|(i, _)| i);
        let Some(i) = slot else {
            return Err(DevicePluginError::Count {
                pod: pod.to_owned(),
                pool: r.pool.to_string(),
                asked: requests.iter().filter(|q| q.pool == r.pool).count(),
                held: vfs.iter().filter(|l| l.pool == r.pool.as_str()).count(),
            });
        };
        used[i] = true;
        let l = vfs[i];
        if let Some(m) = r.mac {
            if l.mac != Some(m) {
                return Err(DevicePluginError::Mac {
                    pod: pod.to_owned(),
                    vf: l.vf,
                    asked: m.to_string(),
                    has: l.mac.map(|m| m.to_string()),
                });
            }
        }
        out.push((
            l.vf,
            GuestNetwork {
                mac: l.mac,
                pci_id: l.pci_id,
                l3: r.l3.clone(),
            },
        ));
    }
    for (i, l) in vfs.iter().enumerate() {
        if !used[i] {
            out.push((
                l.vf,
                GuestNetwork {
                    mac: l.mac,
                    pci_id: l.pci_id,
                    l3: Default::default(),
                },
            ));
        }
    }
    out.sort_by_key(|(vf, _)| *vf);
    let nets: Vec<GuestNetwork> = out.into_iter().map(|(_, g)| g).collect();
    validate_guest_networks(&nets).map_err(|source| DevicePluginError::Guest {
        pod: pod.to_owned(),
        source,
    })?;
    Ok(nets)
}

/// `spec` with the guest annotation set to `nets` (of `pod`), and nothing
/// else changed.
pub fn with_guest_annotation(
    spec: &Spec,
    pod: &str,
    nets: &[GuestNetwork],
) -> Result<Spec, DevicePluginError> {
    spec.set_guest(nets)
        .map_err(|source| DevicePluginError::Spec {
            pod: pod.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use kata_sriov::guestnet::GUEST_ANNOTATION;
    use kata_sriov::policy::request::parse_request;
    use kata_sriov::state::ledger::{LeaseState, Ledger};
    use kata_sriov::testing::{sample_lease, FakeBinder, FakeSysfs, RecordingNetlink};
    use serde_json::{json, Value};

    fn lease(vf: &str, pool: &str, mac: &str, pod: Option<&str>) -> Lease {
        let mut l = sample_lease(vf, &format!("k8s-dp/{pool}/{vf}"));
        l.pool = pool.into();
        l.mac = Some(mac.parse().unwrap());
        l.state = LeaseState::Claimed;
        l.pod = pod.map(str::to_owned);
        l
    }

    #[test]
    fn entries_take_the_pods_vfs_per_pool_in_address_order() {
        let leases = [
            lease("0000:3b:10.2", "fast", "02:00:00:00:00:02", None),
            lease("0000:3b:10.1", "fast", "02:00:00:00:00:01", None),
            lease("0000:5e:10.0", "slow", "02:00:00:00:00:03", None),
        ];
        let reqs = parse_request(
            r#"[{"pool":"slow","name":"s0","ips":["10.1.0.2/24"]},
                {"pool":"fast","name":"f0","ips":["10.0.0.2/24"]}]"#,
        )
        .unwrap();
        let nets = guest_networks("ns/p", &reqs, &leases).unwrap();
        let v = serde_json::to_value(&nets).unwrap();
        assert_eq!(
            v,
            json!([
                {"mac":"02:00:00:00:00:01","pci_id":"8086:154c","name":"f0","ips":["10.0.0.2/24"]},
                {"mac":"02:00:00:00:00:02","pci_id":"8086:154c"},
                {"mac":"02:00:00:00:00:03","pci_id":"8086:154c","name":"s0","ips":["10.1.0.2/24"]}
            ])
        );
        // More entries than VFs of a pool: refused, naming it.
        let two = parse_request(r#"[{"pool":"slow"},{"pool":"slow"}]"#).unwrap();
        let e = guest_networks("ns/p", &two, &leases)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("2 network(s) asked from pool \"slow\"") && e.contains("1 VF"),
            "{e}"
        );
        // A MAC the VF does not have: refused.
        let mac = parse_request(r#"[{"pool":"slow","mac":"02:00:00:00:00:09"}]"#).unwrap();
        let e = guest_networks("ns/p", &mac, &leases)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("0000:5e:10.0") && e.contains("02:00:00:00:00:09"),
            "{e}"
        );
    }

    #[test]
    fn only_the_guest_annotation_changes() {
        let v = json!({"ociVersion":"1.2.0","annotations":{
            "io.kubernetes.cri.sandbox-namespace":"ns","io.kubernetes.cri.sandbox-name":"p",
            "x":"y"},"linux":{"devices":[]},"unknown":{"a":1}});
        let spec = Spec::from_value(&v).unwrap();
        assert_eq!(pod_of(&spec).as_deref(), Some("ns/p"));
        let none = Spec::from_value(&json!({"annotations":{}})).unwrap();
        assert_eq!(pod_of(&none), None);
        let leases = [lease("0000:3b:10.1", "fast", "02:00:00:00:00:01", None)];
        let nets = guest_networks("ns/p", &[], &leases).unwrap();
        let out = with_guest_annotation(&spec, "ns/p", &nets).unwrap();
        let out: Value = serde_json::from_str(out.text()).unwrap();
        let mut want = v.clone();
        want["annotations"][GUEST_ANNOTATION] =
            json!(r#"[{"mac":"02:00:00:00:00:01","pci_id":"8086:154c"}]"#);
        assert_eq!(out, want);
        // Annotations that are not an object never make a Spec.
        assert!(Spec::from_value(&json!({"annotations":[]})).is_err());
    }

    #[test]
    fn finds_the_pods_leases_through_the_engine_and_waits_only_for_unknown_ones() {
        let d = tempfile::tempdir().unwrap();
        let text = format!("state_dir = {:?}\n", d.path().join("state"));
        let cfg = kata_sriov::Config::parse(&text, &d.path().join("c.toml")).unwrap();
        let fake = FakeSysfs::new(&d.path().join("sys"));
        let (nl, binder) = (RecordingNetlink::new(), FakeBinder::new(&fake));
        let engine = Engine::new(&cfg, &nl, &binder).unwrap();
        let ledger = Ledger::open(&cfg.state_dir).unwrap();
        // Another owner's lease: not waited for.
        ledger
            .create(&lease("0000:3b:10.3", "fast", "02:00:00:00:00:03", None))
            .unwrap();
        let mut other = lease("0000:3b:10.3", "fast", "02:00:00:00:00:03", None);
        other.owner = "default/c1".into();
        ledger.update(&other).unwrap();
        let t = Instant::now();
        assert!(pod_leases(&engine, "ns/p", Duration::from_secs(30))
            .unwrap()
            .is_empty());
        assert!(t.elapsed() < Duration::from_secs(5));
        // One device plugin VF with no pod yet: waited for (bounded).
        ledger
            .create(&lease("0000:3b:10.1", "fast", "02:00:00:00:00:01", None))
            .unwrap();
        let t = Instant::now();
        assert!(pod_leases(&engine, "ns/p", Duration::from_millis(300))
            .unwrap()
            .is_empty());
        assert!(t.elapsed() >= Duration::from_millis(300));
        // Recorded for the pod (as the node agent does): found.
        let vf = "0000:3b:10.1".parse().unwrap();
        assert!(engine
            .set_pod(vf, "k8s-dp/fast/0000:3b:10.1", Some("ns/p"))
            .unwrap());
        assert!(!engine.set_pod(vf, "someone/else", Some("ns/q")).unwrap());
        let got = pod_leases(&engine, "ns/p", Duration::from_secs(30)).unwrap();
        assert_eq!(got.iter().map(|l| l.vf).collect::<Vec<_>>(), [vf]);
        assert!(pod_leases(&engine, "ns/q", Duration::from_secs(30))
            .unwrap()
            .is_empty());
    }
}
