"""The cluster runs the edgemq image the way the operator will: as the image's own
non-root user, with a read-only root filesystem and no capabilities."""

import json
import re

POD = """
apiVersion: v1
kind: Pod
metadata:
  name: edgemq-version
spec:
  restartPolicy: Never
  automountServiceAccountToken: false
  containers:
  - name: edgemq
    image: {image}
    imagePullPolicy: {pull_policy}
    args: ["--version"]
    securityContext:
      runAsNonRoot: true
      readOnlyRootFilesystem: true
      allowPrivilegeEscalation: false
      capabilities:
        drop: ["ALL"]
"""


def test_image_runs_as_non_root_on_a_read_only_root(cluster, namespace):
    # No runAsUser: runAsNonRoot makes the kubelet check the image's own User.
    cluster.apply_yaml(POD.format(image=cluster.image, pull_policy=cluster.pull_policy), namespace)

    def finished():
        pod = json.loads(cluster.kubectl("get", "pod", "edgemq-version", "-n", namespace,
                                         "-o", "json").stdout)
        phase = pod["status"].get("phase")
        if phase == "Failed":
            raise cluster.GiveUp(f"pod failed: {json.dumps(pod['status'], indent=1)}")
        for cs in pod["status"].get("containerStatuses", []):
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in ("CreateContainerConfigError", "ErrImageNeverPull",
                                         "InvalidImageName", "ErrImagePull"):
                raise cluster.GiveUp(f"container not started: {waiting}")
        return phase == "Succeeded" and pod

    pod = cluster.wait_for(finished, 120, "the edgemq --version pod to complete")
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    log = cluster.kubectl("logs", "edgemq-version", "-n", namespace).stdout
    assert re.match(r"edgemq \d+\.\d+\.\d+", log), log
