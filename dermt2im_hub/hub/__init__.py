"""The Hub layer: model/dataset cards rendered from manifests, private-by-default pushes, Hub-or-local inputs."""
