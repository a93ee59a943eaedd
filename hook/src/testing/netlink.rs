//! [`RecordingNetlink`]: an in-memory [`VfNetlink`] that records every
//! call, for ordering and fault-injection tests.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::kernel::netlink::set_hint;
use crate::kernel::netlink::{
    NetlinkError, PfView, VfNetlink, VfSetting, VfSettingKind, VfSettings,
};
use crate::pci::IfName;
use crate::rtnl::RtnlError;

#[derive(Debug, Default)]
struct FakeState {
    pfs: BTreeMap<IfName, Vec<VfSettings>>,
    calls: Vec<Call>,
    fail_kind: HashMap<VfSettingKind, i32>,
    fail_call: HashMap<usize, i32>,
    ignore_kind: BTreeSet<VfSettingKind>,
    set_delay: Duration,
    up: BTreeSet<IfName>,
}

/// One call made on a [`RecordingNetlink`], in call order (failed calls
/// included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    VfSettings {
        pf: IfName,
        vf: u32,
    },
    SetVf {
        pf: IfName,
        vf: u32,
        setting: VfSetting,
    },
    LinkUp {
        ifname: IfName,
    },
}

/// An in-memory [`VfNetlink`] for tests: per-(PF, VF) settings, a log of
/// every call, injectable failures and an optional delay per `set_vf`
/// (slept without holding the lock, so concurrent callers overlap).
/// Injected failures look like the kernel's: [`NetlinkError::Set`] (or
/// `Read`/`LinkUp`) with an [`RtnlError::Kernel`] carrying the errno.
#[derive(Debug, Default)]
pub struct RecordingNetlink {
    state: Mutex<FakeState>,
}

impl RecordingNetlink {
    pub fn new() -> RecordingNetlink {
        RecordingNetlink::default()
    }

    fn lock(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds (or resets) a PF with `num_vfs` VFs in the default state
    /// ([`VfSettings::default`]).
    pub fn add_pf(&self, pf: &IfName, num_vfs: u32) {
        self.lock()
            .pfs
            .insert(pf.clone(), vec![VfSettings::default(); num_vfs as usize]);
    }

    /// Replaces the state of one VF; false if there is no such PF/VF.
    pub fn set_state(&self, pf: &IfName, vf: u32, settings: VfSettings) -> bool {
        match self
            .lock()
            .pfs
            .get_mut(pf)
            .and_then(|v| v.get_mut(vf as usize))
        {
            Some(slot) => {
                *slot = settings;
                true
            }
            None => false,
        }
    }

    /// The current state of one VF, without recording a call.
    pub fn state(&self, pf: &IfName, vf: u32) -> Option<VfSettings> {
        self.lock()
            .pfs
            .get(pf)
            .and_then(|v| v.get(vf as usize))
            .cloned()
    }

    /// Every `set_vf` of this kind fails with `errno` (e.g. `LinkState` ->
    /// `EOPNOTSUPP`, like igb) and changes nothing.
    pub fn fail_setting(&self, kind: VfSettingKind, errno: i32) {
        self.lock().fail_kind.insert(kind, errno);
    }

    /// The call that will be `calls()[index]` (0-based, counting every
    /// call of any kind) fails with `errno` and changes nothing.
    pub fn fail_call(&self, index: usize, errno: i32) {
        self.lock().fail_call.insert(index, errno);
    }

    /// `set_vf` of this kind succeeds but changes nothing (a driver that
    /// ignores the setting), so that a read-back sees the old value.
    pub fn ignore_setting(&self, kind: VfSettingKind) {
        self.lock().ignore_kind.insert(kind);
    }

    /// Removes every injected failure and ignored kind.
    pub fn clear_faults(&self) {
        let mut s = self.lock();
        s.fail_kind.clear();
        s.fail_call.clear();
        s.ignore_kind.clear();
    }

    /// Each `set_vf` sleeps this long (outside the lock) before acting.
    pub fn set_delay(&self, delay: Duration) {
        self.lock().set_delay = delay;
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Forgets the recorded calls (the call index of `fail_call` restarts at 0).
    pub fn clear_calls(&self) {
        self.lock().calls.clear();
    }

    /// The settings `set_vf` was called with, in order, for one VF.
    pub fn set_calls(&self, pf: &IfName, vf: u32) -> Vec<VfSetting> {
        self.lock()
            .calls
            .iter()
            .filter_map(|c| match c {
                Call::SetVf {
                    pf: p,
                    vf: v,
                    setting,
                } if p == pf && *v == vf => Some(*setting),
                _ => None,
            })
            .collect()
    }

    /// Whether `link_up` succeeded on this interface.
    pub fn is_up(&self, ifname: &IfName) -> bool {
        self.lock().up.contains(ifname)
    }

    /// Records `call`; returns the injected errno for it, if any.
    fn record(s: &mut FakeState, call: Call) -> Option<i32> {
        let index = s.calls.len();
        s.calls.push(call);
        s.fail_call.get(&index).copied()
    }
}

fn fake_error(what: &str, errno: i32) -> RtnlError {
    RtnlError::Kernel {
        request: format!("{what} (RecordingNetlink)"),
        errno,
        message: None,
    }
}

impl VfNetlink for RecordingNetlink {
    fn vf_settings(&self, pf: &IfName, vf: u32) -> Result<VfSettings, NetlinkError> {
        let mut s = self.lock();
        if let Some(errno) = Self::record(&mut s, Call::VfSettings { pf: pf.clone(), vf }) {
            return Err(NetlinkError::Read {
                pf: pf.clone(),
                vf,
                cause: fake_error("RTM_GETLINK", errno),
            });
        }
        let vfs = s.pfs.get(pf).ok_or_else(|| NetlinkError::NoSuchPf {
            pf: pf.clone(),
            cause: fake_error("RTM_GETLINK", libc::ENODEV),
        })?;
        vfs.get(vf as usize)
            .cloned()
            .ok_or_else(|| NetlinkError::NoSuchVf {
                pf: pf.clone(),
                vf,
                num_vfs: vfs.len() as u32,
            })
    }

    /// Recorded as the [`Call::VfSettings`] it is on the kernel (one
    /// `RTM_GETLINK`). The fake PF itself has no MAC; its VFs' are listed.
    fn pf_view(&self, pf: &IfName, vf: u32) -> Result<PfView, NetlinkError> {
        let settings = self.vf_settings(pf, vf)?;
        let s = self.lock();
        let macs = s
            .pfs
            .get(pf)
            .map(|vfs| vfs.iter().map(|v| v.mac).filter(|m| !m.is_zero()).collect())
            .unwrap_or_default();
        Ok(PfView { vf: settings, macs })
    }

    fn set_vf(&self, pf: &IfName, vf: u32, setting: VfSetting) -> Result<(), NetlinkError> {
        let (injected, delay) = {
            let mut s = self.lock();
            let injected = Self::record(
                &mut s,
                Call::SetVf {
                    pf: pf.clone(),
                    vf,
                    setting,
                },
            );
            (injected, s.set_delay)
        };
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let mut s = self.lock();
        let fail = |errno: i32| NetlinkError::Set {
            pf: pf.clone(),
            vf,
            setting,
            hint: set_hint(&setting, Some(errno), 1),
            cause: fake_error("RTM_SETLINK", errno),
        };
        if let Some(errno) = injected.or_else(|| s.fail_kind.get(&setting.kind()).copied()) {
            return Err(fail(errno));
        }
        let ignore = s.ignore_kind.contains(&setting.kind());
        let Some(vfs) = s.pfs.get_mut(pf) else {
            return Err(NetlinkError::NoSuchPf {
                pf: pf.clone(),
                cause: fake_error("RTM_GETLINK", libc::ENODEV),
            });
        };
        // Drivers answer EINVAL for a VF number they do not have.
        let slot = vfs.get_mut(vf as usize).ok_or_else(|| fail(libc::EINVAL))?;
        if !ignore {
            slot.apply(setting);
        }
        Ok(())
    }

    fn link_up(&self, ifname: &IfName) -> Result<(), NetlinkError> {
        let mut s = self.lock();
        if let Some(errno) = Self::record(
            &mut s,
            Call::LinkUp {
                ifname: ifname.clone(),
            },
        ) {
            return Err(NetlinkError::LinkUp {
                ifname: ifname.clone(),
                cause: fake_error("RTM_SETLINK", errno),
            });
        }
        s.up.insert(ifname.clone());
        Ok(())
    }
}
