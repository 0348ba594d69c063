//! A sandbox's cgroup as plain data: which directories to make and which values to write to
//! which interface files, in order, for given [`Limits`] on a given [`Host`]. Takes both;
//! hands on a [`Plan`] that the group carries out, and that unit tests check without root.
//! A limit the host cannot enforce is refused here, naming the missing controller; a swap
//! limit is refused, warned about or skipped as docker would.

use std::path::{Path, PathBuf};

use super::host::{CGROUP_ROOT, Hierarchy, Host, Layout, PARENT};
use super::limits::{CPU_PERIOD_US, Limits};
use super::{CgroupError, Controller};

/// What to do when an interface file a write needs does not exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IfMissing {
    /// Refuse: the limit cannot be enforced.
    Fail(Controller),
    /// Go on with a warning, as docker does for the swap limit it implies.
    Warn,
    /// Go on: the limit holds anyway (a swap limit with no swap on).
    Skip,
}

/// One step of creating a sandbox's cgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// A directory shared by every sandbox, made if missing and never removed.
    Parent(PathBuf),
    /// The sandbox's own group, removed with it.
    Group(PathBuf),
    /// A value written to an interface file.
    Write {
        path: PathBuf,
        value: String,
        if_missing: IfMissing,
    },
}

/// A sandbox's cgroup as plain data: how to make it, and what it is made of.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    pub steps: Vec<Step>,
    /// The sandbox's groups, one per hierarchy (one in v2).
    pub groups: Vec<PathBuf>,
    /// The file counting OOM kills as `oom_kill N`, with a memory limit.
    pub oom: Option<PathBuf>,
    /// v2's cgroup.kill, which kills every process of the group at once.
    pub kill: Option<PathBuf>,
}

/// Decides the cgroup for `limits` named `name` on `host`. Nothing is needed, and the plan is
/// empty, when the limits are.
pub(crate) fn plan(limits: &Limits, name: &str, host: &Host) -> Result<Plan, CgroupError> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(CgroupError::Name {
            name: name.to_string(),
        });
    }
    let mut plan = Plan::default();
    if limits.is_empty() {
        return Ok(plan);
    }
    // Without swap accounting a swap limit the user gave is refused; docker's implied one
    // gives a warning, as docker does; with no swap on, either holds anyway.
    let swap_missing = if !host.swap_in_use {
        IfMissing::Skip
    } else if limits.memory_swap.is_some() {
        IfMissing::Fail(Controller::Swap)
    } else {
        IfMissing::Warn
    };
    match &host.layout {
        Layout::V2 { root, controllers } => {
            plan_v2(limits, name, root, controllers, swap_missing, &mut plan)?;
        }
        Layout::V1 { hierarchies } => plan_v1(limits, name, hierarchies, swap_missing, &mut plan)?,
    }
    Ok(plan)
}

fn write(path: PathBuf, value: impl ToString, if_missing: IfMissing) -> Step {
    Step::Write {
        path,
        value: value.to_string(),
        if_missing,
    }
}

/// v2: one group under `root`, its controllers enabled down from the root.
fn plan_v2(
    limits: &Limits,
    name: &str,
    root: &Path,
    controllers: &[String],
    swap_missing: IfMissing,
    plan: &mut Plan,
) -> Result<(), CgroupError> {
    let fail = IfMissing::Fail;
    let needed = needed_controllers(limits);
    if let Some(c) = needed
        .iter()
        .find(|c| !controllers.iter().any(|have| have == c.name()))
    {
        return Err(CgroupError::MissingController {
            controller: *c,
            path: root.join("cgroup.controllers"),
        });
    }
    let parent = root.join(PARENT);
    let group = parent.join(name);
    plan.steps.push(Step::Parent(parent.clone()));
    for dir in [root, &parent] {
        for c in &needed {
            let path = dir.join("cgroup.subtree_control");
            plan.steps
                .push(write(path, format!("+{}", c.name()), fail(*c)));
        }
    }
    plan.steps.push(Step::Group(group.clone()));
    if let Some(memory) = limits.memory {
        let max = group.join("memory.max");
        plan.steps
            .push(write(max, memory, fail(Controller::Memory)));
        if let Some(total) = limits.swap_total() {
            let swap = total.saturating_sub(memory);
            plan.steps
                .push(write(group.join("memory.swap.max"), swap, swap_missing));
        }
        plan.oom = Some(group.join("memory.events"));
    }
    if let Some(n) = limits.pids_max() {
        plan.steps
            .push(write(group.join("pids.max"), n, fail(Controller::Pids)));
    }
    if let Some(quota) = limits.cpu_quota_us() {
        let max = format!("{quota} {CPU_PERIOD_US}");
        plan.steps
            .push(write(group.join("cpu.max"), max, fail(Controller::Cpu)));
    }
    plan.kill = Some(group.join("cgroup.kill"));
    plan.groups.push(group);
    Ok(())
}

/// v1: a group in each hierarchy holding a needed controller.
fn plan_v1(
    limits: &Limits,
    name: &str,
    hierarchies: &[Hierarchy],
    swap_missing: IfMissing,
    plan: &mut Plan,
) -> Result<(), CgroupError> {
    for c in needed_controllers(limits) {
        let Some(h) = hierarchies
            .iter()
            .find(|h| h.controllers.iter().any(|have| have == c.name()))
        else {
            return Err(CgroupError::MissingController {
                controller: c,
                path: Path::new(CGROUP_ROOT).join(c.name()),
            });
        };
        let group = h.mountpoint.join(PARENT).join(name);
        if !plan.groups.contains(&group) {
            plan.steps.push(Step::Parent(h.mountpoint.join(PARENT)));
            plan.steps.push(Step::Group(group.clone()));
            plan.groups.push(group.clone());
        }
        let fail = IfMissing::Fail(c);
        match c {
            Controller::Memory => {
                let memory = limits.memory.unwrap_or_default();
                plan.steps
                    .push(write(group.join("memory.limit_in_bytes"), memory, fail));
                if let Some(total) = limits.swap_total() {
                    let path = group.join("memory.memsw.limit_in_bytes");
                    plan.steps.push(write(path, total, swap_missing));
                }
                plan.oom = Some(group.join("memory.oom_control"));
            }
            Controller::Pids => {
                let n = limits.pids_max().unwrap_or_default();
                plan.steps.push(write(group.join("pids.max"), n, fail));
            }
            Controller::Cpu => {
                let quota = limits.cpu_quota_us().unwrap_or_default();
                let period = group.join("cpu.cfs_period_us");
                plan.steps.push(write(period, CPU_PERIOD_US, fail));
                plan.steps
                    .push(write(group.join("cpu.cfs_quota_us"), quota, fail));
            }
            Controller::Swap => {}
        }
    }
    Ok(())
}

/// The controllers `limits` use, in the order their files are written.
fn needed_controllers(limits: &Limits) -> Vec<Controller> {
    let mut needed = Vec::new();
    if limits.memory.is_some() {
        needed.push(Controller::Memory);
    }
    if limits.pids_max().is_some() {
        needed.push(Controller::Pids);
    }
    if limits.cpus.is_some() {
        needed.push(Controller::Cpu);
    }
    needed
}

#[cfg(test)]
mod tests {
    use super::super::host::v1_hierarchies;
    use super::super::tests::{MOUNTINFO, limits};
    use super::*;

    fn v1_host(swap_in_use: bool) -> Host {
        Host {
            layout: Layout::V1 {
                hierarchies: v1_hierarchies(MOUNTINFO),
            },
            swap_in_use,
        }
    }

    fn v2_host(controllers: &str) -> Host {
        Host {
            layout: Layout::V2 {
                root: PathBuf::from("/sys/fs/cgroup"),
                controllers: controllers.split_whitespace().map(String::from).collect(),
            },
            swap_in_use: true,
        }
    }

    fn w(path: &str, value: &str, if_missing: IfMissing) -> Step {
        Step::Write {
            path: PathBuf::from(path),
            value: value.into(),
            if_missing,
        }
    }

    #[test]
    fn plans_v1_groups_per_hierarchy() {
        let l = limits(Some("64m"), None, Some("64"), Some("0.5")).unwrap();
        let p = plan(&l, "4242", &v1_host(true)).unwrap();
        let fail = IfMissing::Fail;
        let mem = "/sys/fs/cgroup/memory/imgfs/4242";
        let pids = "/sys/fs/cgroup/pids/imgfs/4242";
        let cpu = "/sys/fs/cgroup/cpu,cpuacct/imgfs/4242";
        assert_eq!(
            p.steps,
            [
                Step::Parent("/sys/fs/cgroup/memory/imgfs".into()),
                Step::Group(mem.into()),
                w(
                    &format!("{mem}/memory.limit_in_bytes"),
                    "67108864",
                    fail(Controller::Memory)
                ),
                w(
                    &format!("{mem}/memory.memsw.limit_in_bytes"),
                    "134217728",
                    IfMissing::Warn
                ),
                Step::Parent("/sys/fs/cgroup/pids/imgfs".into()),
                Step::Group(pids.into()),
                w(&format!("{pids}/pids.max"), "64", fail(Controller::Pids)),
                Step::Parent("/sys/fs/cgroup/cpu,cpuacct/imgfs".into()),
                Step::Group(cpu.into()),
                w(
                    &format!("{cpu}/cpu.cfs_period_us"),
                    "100000",
                    fail(Controller::Cpu)
                ),
                w(
                    &format!("{cpu}/cpu.cfs_quota_us"),
                    "50000",
                    fail(Controller::Cpu)
                ),
            ]
        );
        assert_eq!(p.groups, [PathBuf::from(mem), pids.into(), cpu.into()]);
        assert_eq!(p.oom, Some(format!("{mem}/memory.oom_control").into()));
        assert_eq!(p.kill, None);
    }

    /// A swap limit the user gave needs swap accounting; the one docker implies warns; with no
    /// swap on, either holds anyway.
    #[test]
    fn plans_swap_honestly() {
        let swap_step = |l: &Limits, host: &Host| {
            plan(l, "1", host)
                .unwrap()
                .steps
                .into_iter()
                .find_map(|s| match s {
                    Step::Write {
                        path,
                        value,
                        if_missing,
                    } if path.ends_with("memory.memsw.limit_in_bytes")
                        || path.ends_with("memory.swap.max") =>
                    {
                        Some((value, if_missing))
                    }
                    _ => None,
                })
        };
        let given = limits(Some("64m"), Some("64m"), None, None).unwrap();
        let implied = limits(Some("64m"), None, None, None).unwrap();
        let unlimited = limits(Some("64m"), Some("-1"), None, None).unwrap();
        let swap = IfMissing::Fail(Controller::Swap);
        assert_eq!(
            swap_step(&given, &v1_host(true)),
            Some(("67108864".into(), swap))
        );
        assert_eq!(
            swap_step(&given, &v1_host(false)),
            Some(("67108864".into(), IfMissing::Skip))
        );
        assert_eq!(
            swap_step(&implied, &v1_host(true)),
            Some(("134217728".into(), IfMissing::Warn))
        );
        assert_eq!(swap_step(&unlimited, &v1_host(true)), None);
        let v2 = v2_host("cpu memory pids");
        assert_eq!(swap_step(&given, &v2), Some(("0".into(), swap)));
        assert_eq!(
            swap_step(&implied, &v2),
            Some(("67108864".into(), IfMissing::Warn))
        );
    }

    #[test]
    fn plans_v2_in_one_group() {
        let l = limits(Some("64m"), Some("100m"), Some("64"), Some("0.5")).unwrap();
        let p = plan(
            &l,
            "4242",
            &v2_host("cpuset cpu io memory hugetlb pids rdma"),
        )
        .unwrap();
        let fail = IfMissing::Fail;
        let (mem, pids, cpu) = (Controller::Memory, Controller::Pids, Controller::Cpu);
        let g = "/sys/fs/cgroup/imgfs/4242";
        assert_eq!(
            p.steps,
            [
                Step::Parent("/sys/fs/cgroup/imgfs".into()),
                w(
                    "/sys/fs/cgroup/cgroup.subtree_control",
                    "+memory",
                    fail(mem)
                ),
                w("/sys/fs/cgroup/cgroup.subtree_control", "+pids", fail(pids)),
                w("/sys/fs/cgroup/cgroup.subtree_control", "+cpu", fail(cpu)),
                w(
                    "/sys/fs/cgroup/imgfs/cgroup.subtree_control",
                    "+memory",
                    fail(mem)
                ),
                w(
                    "/sys/fs/cgroup/imgfs/cgroup.subtree_control",
                    "+pids",
                    fail(pids)
                ),
                w(
                    "/sys/fs/cgroup/imgfs/cgroup.subtree_control",
                    "+cpu",
                    fail(cpu)
                ),
                Step::Group(g.into()),
                w(&format!("{g}/memory.max"), "67108864", fail(mem)),
                w(
                    &format!("{g}/memory.swap.max"),
                    "37748736",
                    fail(Controller::Swap)
                ),
                w(&format!("{g}/pids.max"), "64", fail(pids)),
                w(&format!("{g}/cpu.max"), "50000 100000", fail(cpu)),
            ]
        );
        assert_eq!(p.groups, [PathBuf::from(g)]);
        assert_eq!(p.oom, Some(format!("{g}/memory.events").into()));
        assert_eq!(p.kill, Some(format!("{g}/cgroup.kill").into()));
    }

    #[test]
    fn refuses_what_cannot_be_enforced() {
        let cpus = limits(None, None, None, Some("1")).unwrap();
        let e = plan(&cpus, "1", &v2_host("memory pids")).unwrap_err();
        assert!(matches!(
            e,
            CgroupError::MissingController {
                controller: Controller::Cpu,
                ..
            }
        ));
        assert_eq!(
            e.to_string(),
            "--cpus cannot be enforced: no cgroup cpu controller on this machine (see /sys/fs/cgroup/cgroup.controllers)"
        );
        let pids = limits(None, None, Some("10"), None).unwrap();
        let none = Host {
            layout: Layout::V1 {
                hierarchies: Vec::new(),
            },
            swap_in_use: true,
        };
        assert!(matches!(
            plan(&pids, "1", &none),
            Err(CgroupError::MissingController {
                controller: Controller::Pids,
                ..
            })
        ));
        assert_eq!(
            plan(&Limits::default(), "1", &none).unwrap(),
            Plan::default()
        );
        for bad in ["", ".", "..", "a/b", "a\0b"] {
            assert!(
                matches!(plan(&pids, bad, &none), Err(CgroupError::Name { .. })),
                "{bad:?}"
            );
        }
    }
}
