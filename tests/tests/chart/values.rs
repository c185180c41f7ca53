//! Values reach the containers: environment, per-flavor settings, and
//! the modules ConfigMap mounted as a directory.

use super::{RELEASE, env_of, modules_values};
use anyhow::{Context, Result};
use e2e::chart::{container, env_literal, name_of, pod_spec, render};
use e2e::fixture;
use serde_json::json;

#[test]
fn values_reach_the_containers_environment() -> Result<()> {
    // (values, deployment, variable, expected literal value)
    let cases: &[(&[&str], &str, &str, &str)] = &[
        (
            &["--set", "planner.tasks=100"],
            "workers-planner",
            "TASKS",
            "100",
        ),
        (
            &["--set", "planner.store=memory"],
            "workers-planner",
            "STORE",
            "memory",
        ),
        (
            &["--set", "planner.queueLimit=77"],
            "workers-planner",
            "QUEUE_LIMIT",
            "77",
        ),
        (
            &["--set", "planner.maxAttempts=9"],
            "workers-planner",
            "MAX_ATTEMPTS",
            "9",
        ),
        (
            &["--set", "planner.resultTtl=7d"],
            "workers-planner",
            "RESULT_TTL",
            "7d",
        ),
        (
            &["--set", "planner.resultLimit=123"],
            "workers-planner",
            "RESULT_LIMIT",
            "123",
        ),
        (
            &["--set", "planner.heartbeatTimeoutMs=4500"],
            "workers-planner",
            "HEARTBEAT_TIMEOUT_MS",
            "4500",
        ),
        (
            &["--set", "planner.dispatchTimeoutMs=120000"],
            "workers-planner",
            "DISPATCH_TIMEOUT_MS",
            "120000",
        ),
        (
            &["--set", "planner.retainFinished=5000"],
            "workers-planner",
            "RETAIN_FINISHED",
            "5000",
        ),
        (
            &["--set", "auth.submitRequiresToken=true"],
            "workers-planner",
            "SUBMIT_REQUIRES_TOKEN",
            "true",
        ),
        (
            &["--set", "auth.readRequiresToken=true"],
            "workers-planner",
            "READ_REQUIRES_TOKEN",
            "true",
        ),
        (
            &["--set", "planner.port=4000"],
            "workers-planner",
            "PORT",
            "4000",
        ),
        (
            &["--set", "planner.service.port=81"],
            "workers-general",
            "PLANNER",
            "http://workers-planner:81",
        ),
        (
            &["--set", "fullnameOverride=ts"],
            "ts-general",
            "PLANNER",
            "http://ts-planner:3000",
        ),
        (
            &["--set", "general.ops={mul,add}"],
            "workers-general",
            "OPS",
            "mul,add",
        ),
        (
            &["--set", "mul.replicas=1", "--set", "mul.slots=3"],
            "workers-mul",
            "SLOTS",
            "3",
        ),
        (
            &["--set", "worker.slots=5"],
            "workers-general",
            "SLOTS",
            "5",
        ),
        (
            &["--set", "worker.slots=5", "--set", "general.slots=2"],
            "workers-general",
            "SLOTS",
            "2",
        ),
        (
            &["--set", "add.replicas=1", "--set", "add.workMs=3000-12000"],
            "workers-add",
            "WORK_MS",
            "3000-12000",
        ),
        (
            &["--set", "general.workMs=250"],
            "workers-general",
            "WORK_MS",
            "250",
        ),
        (
            &["--set", "worker.workMs=40"],
            "workers-general",
            "WORK_MS",
            "40",
        ),
        (
            &["--set", "worker.opTimeoutMs=2500"],
            "workers-general",
            "OP_TIMEOUT_MS",
            "2500",
        ),
        (
            &["--set", "worker.opMemoryMb=64"],
            "workers-general",
            "OP_MEMORY_MB",
            "64",
        ),
        (
            &["--set", "worker.heartbeatMs=300"],
            "workers-general",
            "HEARTBEAT_MS",
            "300",
        ),
        (
            &["--set", "worker.port=9000"],
            "workers-general",
            "ADDRESS",
            "http://$(POD_IP):9000",
        ),
        (
            &["--set", "worker.port=9000"],
            "workers-general",
            "PORT",
            "9000",
        ),
        (
            &["--set", "logging.format=text"],
            "workers-general",
            "LOG_FORMAT",
            "text",
        ),
        (
            &["--set", "logging.level=debug"],
            "workers-planner",
            "LOG",
            "debug",
        ),
        (
            &["--set", "modules.mountPath=/modules"],
            "workers-general",
            "OPS_DIR",
            "/modules",
        ),
    ];
    for (args, deployment, var, want) in cases {
        let manifest = render(RELEASE, args)?;
        assert_eq!(
            env_of(&manifest, deployment, var).as_deref(),
            Some(*want),
            "{args:?}: {deployment} {var}"
        );
    }
    // The rest of a flavor's settings.
    let manifest = render(
        RELEASE,
        &[
            "--set",
            "mul.replicas=1",
            "--set",
            "mul.nodeSelector.pool=fast",
            "--set",
            "mul.tolerations[0].key=dedicated",
            "--set",
            "mul.tolerations[0].operator=Exists",
            "--set",
            "mul.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].key=zone",
            "--set",
            "mul.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].operator=Exists",
            "--set",
            "mul.resources.limits.cpu=2000m",
            "--set",
            "mul.resources.limits.memory=1Gi",
        ],
    )?;
    let mul = manifest.get("Deployment", "workers-mul")?;
    assert_eq!(pod_spec(mul)["nodeSelector"], json!({"pool": "fast"}));
    assert_eq!(pod_spec(mul)["tolerations"][0]["key"], "dedicated");
    assert!(pod_spec(mul)["affinity"]["nodeAffinity"].is_object());
    assert_eq!(
        container(mul)?["resources"]["limits"],
        json!({"cpu": "2000m", "memory": "1Gi"})
    );
    let general = manifest.get("Deployment", "workers-general")?;
    assert!(
        pod_spec(general)["nodeSelector"].is_null(),
        "a flavor's settings stay its own"
    );
    Ok(())
}

#[test]
fn modules_come_from_a_config_map_mounted_as_a_directory_and_a_change_does_not_roll_pods()
-> Result<()> {
    let dir = tempfile::tempdir()?;
    let pow = std::fs::read(fixture("pow"))?;
    let mul_v2 = std::fs::read(fixture("mul_v2"))?;
    let v1 = modules_values(dir.path(), "v1.yaml", &[("pow", &pow)])?;
    let v2 = modules_values(dir.path(), "v2.yaml", &[("pow", &pow), ("mul", &mul_v2)])?;
    let common = [
        "--set",
        "auth.token=fixed",
        "--set",
        "mul.replicas=1",
        "--set",
        "extraFlavors.pow.replicas=1",
        "--set",
        "extraFlavors.pow.ops={pow}",
    ];
    let first = render(RELEASE, &[&common[..], &["-f", &v1]].concat())?;
    let second = render(RELEASE, &[&common[..], &["-f", &v2]].concat())?;

    let files = first.config_map_files("workers-modules")?;
    assert_eq!(files.keys().collect::<Vec<_>>(), vec!["pow.wasm"]);
    assert_eq!(
        files["pow.wasm"], pow,
        "binaryData holds the module byte for byte"
    );
    assert_eq!(
        second.config_map_files("workers-modules")?["mul.wasm"],
        mul_v2
    );

    for deployment in first
        .all("Deployment")
        .into_iter()
        .filter(|d| name_of(d) != "workers-planner")
    {
        let name = name_of(deployment);
        let c = container(deployment)?;
        let mounts = c["volumeMounts"].as_array().context("volumeMounts")?;
        let mount = mounts
            .iter()
            .find(|m| m["mountPath"] == "/ops")
            .with_context(|| format!("{name}: /ops mount"))?;
        assert!(
            mount.get("subPath").is_none(),
            "{name}: a subPath mount never sees ConfigMap updates"
        );
        assert_eq!(env_literal(c, "OPS_DIR"), Some("/ops"), "{name}");
        let volume = pod_spec(deployment)["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == mount["name"])
            .context("the mount's volume")?;
        assert_eq!(volume["configMap"]["name"], "workers-modules", "{name}");
        // A changed module reaches running pods; it must not roll them.
        let after = second.get("Deployment", name)?;
        assert_eq!(
            deployment["spec"]["template"], after["spec"]["template"],
            "{name}: pod template changed with the modules"
        );
    }

    let existing = render(RELEASE, &["--set", "modules.existingConfigMap=my-ops"])?;
    assert!(existing.find("ConfigMap", "workers-modules").is_none());
    let volumes = &pod_spec(existing.get("Deployment", "workers-general")?)["volumes"];
    assert!(
        volumes
            .as_array()
            .into_iter()
            .flatten()
            .any(|v| v["configMap"]["name"] == "my-ops")
    );
    Ok(())
}
