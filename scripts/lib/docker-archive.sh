#!/usr/bin/env bash
# Writes a one-layer docker-archive image tarball (manifest.json + config +
# layer.tar) from a root filesystem directory, without Docker. The result is
# what `docker save` writes and what `ctr -n k8s.io images import` accepts.
# Source it, then:
#
#   docker_archive OUT.tar REPO:TAG ROOTFS_DIR CONFIG_JSON
#
# CONFIG_JSON is the image's runtime config object (User, Entrypoint, Cmd,
# Env, WorkingDir, Labels, ExposedPorts), as in the `config` field of an OCI
# image config. Layer entries are owned as they are on disk, sorted, and dated
# at the epoch so the same input gives the same image id.

docker_archive() {
  local out="$1" ref="$2" rootfs="$3" config="$4"
  local work
  work="$(mktemp -d)"
  tar --sort=name --mtime=@0 --numeric-owner -C "${rootfs}" -cf "${work}/layer.tar" .
  local diff_id
  diff_id="$(sha256sum "${work}/layer.tar" | cut -d' ' -f1)"
  jq -n --argjson config "${config}" --arg diff "sha256:${diff_id}" '{
      architecture: "amd64", os: "linux", created: "1970-01-01T00:00:00Z",
      config: $config,
      rootfs: {type: "layers", diff_ids: [$diff]},
      history: [{created: "1970-01-01T00:00:00Z", created_by: "scripts/lib/docker-archive.sh"}]
    }' >"${work}/config.json"
  local config_id
  config_id="$(sha256sum "${work}/config.json" | cut -d' ' -f1)"
  mv "${work}/config.json" "${work}/${config_id}.json"
  jq -n --arg cfg "${config_id}.json" --arg ref "${ref}" \
    '[{Config: $cfg, RepoTags: [$ref], Layers: ["layer.tar"]}]' >"${work}/manifest.json"
  tar --sort=name --mtime=@0 -C "${work}" -cf "${out}" manifest.json "${config_id}.json" layer.tar
  rm -rf "${work}"
}
