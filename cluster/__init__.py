"""KubeRay manifests, Ray cluster launcher configs and the container image, with the tools that
render and check them."""
