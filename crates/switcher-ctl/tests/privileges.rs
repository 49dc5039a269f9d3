//! Dropping capabilities, in a thread of its own: capabilities (effective, permitted and the
//! bounding set) are per thread, so the test runner's other threads keep theirs. Needs root to
//! mean anything; without CAP_SETPCAP and CAP_BPF in the permitted set it says so and checks
//! only that nothing outside the kept set remains.

use caps::{CapSet, Capability};
use switcher_ctl::privileges::{KEPT, drop_to_bpf_and_net_admin};

#[test]
fn only_bpf_and_net_admin_remain() {
    let was_root =
        caps::has_cap(None, CapSet::Permitted, Capability::CAP_SYS_ADMIN).expect("capget");
    let (effective, permitted, bounding) = std::thread::spawn(|| {
        drop_to_bpf_and_net_admin().expect("drop");
        (
            caps::read(None, CapSet::Effective).expect("effective"),
            caps::read(None, CapSet::Permitted).expect("permitted"),
            caps::read(None, CapSet::Bounding).expect("bounding"),
        )
    })
    .join()
    .expect("thread");
    assert!(
        effective.iter().all(|c| KEPT.contains(c)),
        "effective {effective:?}"
    );
    assert!(
        permitted.iter().all(|c| KEPT.contains(c)),
        "permitted {permitted:?}"
    );
    if was_root {
        assert_eq!(
            effective,
            KEPT.into_iter().collect(),
            "root keeps exactly the two"
        );
        assert!(
            bounding.iter().all(|c| KEPT.contains(c)),
            "bounding {bounding:?}"
        );
    } else {
        eprintln!("not root: only checked that nothing beyond CAP_BPF/CAP_NET_ADMIN remains");
    }
    // The other threads are untouched: this one still has what it had.
    assert_eq!(
        caps::has_cap(None, CapSet::Permitted, Capability::CAP_SYS_ADMIN).expect("capget"),
        was_root
    );
}
