#!/usr/bin/env python3
"""Renders a kustomization of deploy/k8s without the kustomize binary.

    python3 deploy/k8s/render.py deploy/k8s/overlays/dev [-o FILE]
    python3 deploy/k8s/render.py --compare KUSTOMIZE_OUTPUT.yaml deploy/k8s/overlays/dev

Implements exactly the subset of kustomize that deploy/k8s uses, and refuses
anything else (an unknown field is an error, never ignored):

- `resources`: YAML files (one or more documents) and directories holding a
  kustomization.yaml, rendered recursively, in the order listed;
- `patches`: entries with only `path:`, each file one or more strategic-merge
  patches, applied to the resource with the same kind and metadata.name
  (exactly one must exist): mappings merge recursively, a list whose items
  are all mappings with a `name` (containers, env, volumes, ports) merges
  item by item on `name` (new names are appended), any other list or value
  replaces the original, and `null` deletes a key;
- `namespace`: set on every namespaced resource (cluster-scoped kinds such
  as Namespace are left alone);
- `labels`: each entry's `pairs` go to every resource's metadata.labels; with
  `includeTemplates: true` also to the pod template labels of workloads;
  with `includeSelectors: true` also to selectors (and templates);
- `images`: containers and initContainers of pod templates whose image name
  (without tag or digest) equals `name` get `newName`, `newTag`, `digest`.

They run in kustomize's order: resources, patches, namespace, labels, images.
Needs PyYAML (deploy/check-deploy.sh runs it from its venv).

`--compare FILE` renders and checks that FILE (e.g. `kubectl kustomize`'s
output) holds the same objects; lists of named items are compared by name,
since kustomize's strategic merge may order them differently. Exit 1 on any
difference.
"""

import argparse
import copy
import sys
from pathlib import Path

import yaml

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
KNOWN_FIELDS = {"apiVersion", "kind", "resources", "namespace", "labels", "images", "patches"}
LABEL_FIELDS = {"pairs", "includeSelectors", "includeTemplates"}
IMAGE_FIELDS = {"name", "newName", "newTag", "digest"}
CLUSTER_SCOPED = {
    "Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
    "PersistentVolume", "StorageClass", "PriorityClass", "IngressClass",
    "ValidatingWebhookConfiguration", "MutatingWebhookConfiguration", "APIService",
}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


class RenderError(Exception):
    pass


def load_documents(path):
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    for doc in docs:
        if not isinstance(doc, dict) or "kind" not in doc or "metadata" not in doc:
            raise RenderError(f"{path}: every document needs kind and metadata")
    return docs


def kustomization_file(directory):
    for name in KUSTOMIZATION_FILES:
        candidate = directory / name
        if candidate.is_file():
            return candidate
    raise RenderError(f"{directory}: no kustomization.yaml")


def render(directory):
    directory = Path(directory)
    path = kustomization_file(directory)
    with open(path) as f:
        k = yaml.safe_load(f) or {}
    unknown = set(k) - KNOWN_FIELDS
    if unknown:
        raise RenderError(f"{path}: render.py does not implement {sorted(unknown)}")
    if k.get("kind", "Kustomization") != "Kustomization":
        raise RenderError(f"{path}: kind must be Kustomization")

    objects = []
    for entry in k.get("resources", []):
        target = (directory / entry).resolve()
        if target.is_dir():
            objects.extend(render(target))
        elif target.is_file():
            objects.extend(load_documents(target))
        else:
            raise RenderError(f"{path}: resource {entry} not found")
    seen = set()
    for obj in objects:
        key = identity(obj)
        if key in seen:
            raise RenderError(f"{path}: {key} is defined twice")
        seen.add(key)

    for entry in k.get("patches", []):
        if set(entry) != {"path"}:
            raise RenderError(f"{path}: patches entries must have only `path` (got {sorted(entry)})")
        for patch in load_documents(directory / entry["path"]):
            apply_patch(objects, patch, f"{path}: {entry['path']}")

    if "namespace" in k:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = k["namespace"]

    for entry in k.get("labels", []):
        unknown = set(entry) - LABEL_FIELDS
        if unknown:
            raise RenderError(f"{path}: labels: render.py does not implement {sorted(unknown)}")
        pairs = {str(key): str(value) for key, value in entry.get("pairs", {}).items()}
        selectors = bool(entry.get("includeSelectors", False))
        templates = selectors or bool(entry.get("includeTemplates", False))
        for obj in objects:
            add_labels(obj, pairs, selectors, templates)

    for entry in k.get("images", []):
        unknown = set(entry) - IMAGE_FIELDS
        if unknown or "name" not in entry:
            raise RenderError(f"{path}: images: need name; render.py does not implement {sorted(unknown)}")
        for obj in objects:
            for container in containers(obj):
                container["image"] = retag(container.get("image", ""), entry)
    return objects


def identity(obj):
    meta = obj["metadata"]
    return (obj.get("apiVersion", ""), obj["kind"], meta.get("namespace", ""), meta["name"])


def apply_patch(objects, patch, where):
    if any(key.startswith("$") for key in walk_keys(patch)):
        raise RenderError(f"{where}: $-directives are not implemented")
    kind, name = patch["kind"], patch["metadata"]["name"]
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    if len(matches) != 1:
        raise RenderError(f"{where}: {len(matches)} resources of kind {kind} named {name} (need exactly 1)")
    merged = merge(matches[0], patch)
    matches[0].clear()
    matches[0].update(merged)


def walk_keys(node):
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from walk_keys(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk_keys(value)


def named_list(value):
    return isinstance(value, list) and value and all(isinstance(i, dict) and "name" in i for i in value)


def merge(base, patch):
    """Strategic merge of `patch` into a copy of `base` (the subset above)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = copy.deepcopy(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = merge(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
        return out
    if named_list(base) and named_list(patch):
        out = [copy.deepcopy(item) for item in base]
        index = {item["name"]: i for i, item in enumerate(out)}
        for item in patch:
            if item["name"] in index:
                out[index[item["name"]]] = merge(out[index[item["name"]]], item)
            else:
                out.append(copy.deepcopy(item))
        return out
    return copy.deepcopy(patch)


def add_labels(obj, pairs, selectors, templates):
    obj["metadata"].setdefault("labels", {}).update(pairs)
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return
    if templates and obj["kind"] in WORKLOADS:
        spec.setdefault("template", {}).setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
    if selectors:
        if obj["kind"] == "Service":
            spec.setdefault("selector", {}).update(pairs)
        elif obj["kind"] in WORKLOADS or obj["kind"] == "PodDisruptionBudget":
            spec.setdefault("selector", {}).setdefault("matchLabels", {}).update(pairs)


def containers(obj):
    pod = obj.get("spec", {}).get("template", {}).get("spec", {}) if obj["kind"] in WORKLOADS else {}
    return list(pod.get("containers", [])) + list(pod.get("initContainers", []))


def split_image(image):
    """(name, tag, digest) of an image reference."""
    digest = None
    if "@" in image:
        image, digest = image.split("@", 1)
    tag = None
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        image, tag = image[:colon], image[colon + 1:]
    return image, tag, digest


def retag(image, entry):
    name, tag, digest = split_image(image)
    if name != entry["name"]:
        return image
    name = entry.get("newName", name)
    if "digest" in entry:
        return f"{name}@{entry['digest']}"
    if "newTag" in entry:
        return f"{name}:{entry['newTag']}"
    if digest:
        return f"{name}@{digest}"
    return f"{name}:{tag}" if tag else name


def normalized(node):
    if isinstance(node, dict):
        return {key: normalized(value) for key, value in node.items()}
    if named_list(node):
        return sorted((normalized(item) for item in node), key=lambda item: str(item["name"]))
    if isinstance(node, list):
        return [normalized(item) for item in node]
    return node


def compare(rendered, reference_path):
    with open(reference_path) as f:
        reference = [d for d in yaml.safe_load_all(f) if d is not None]
    ours = {identity(o): normalized(o) for o in rendered}
    theirs = {identity(o): normalized(o) for o in reference}
    problems = []
    for key in sorted(set(ours) | set(theirs)):
        if key not in theirs:
            problems.append(f"only render.py has {key}")
        elif key not in ours:
            problems.append(f"only {reference_path} has {key}")
        elif ours[key] != theirs[key]:
            problems.append(f"{key} differs:\n--- render.py\n{yaml.safe_dump(ours[key], sort_keys=True)}"
                            f"--- {reference_path}\n{yaml.safe_dump(theirs[key], sort_keys=True)}")
    return problems


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", help="a directory holding kustomization.yaml")
    parser.add_argument("-o", "--output", help="write here instead of stdout")
    parser.add_argument("--compare", metavar="FILE", help="check FILE holds the same objects")
    args = parser.parse_args()
    try:
        objects = render(args.directory)
    except (RenderError, OSError, yaml.YAMLError) as error:
        print(f"render.py: {error}", file=sys.stderr)
        return 1
    if args.compare:
        problems = compare(objects, args.compare)
        for problem in problems:
            print(f"render.py: {problem}", file=sys.stderr)
        return 1 if problems else 0
    text = yaml.safe_dump_all(objects, sort_keys=False, default_flow_style=False)
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
