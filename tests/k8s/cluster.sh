#!/bin/sh
# The k8s test cluster from a shell (tests/k8s/README.md):
#   d=$(tests/k8s/cluster.sh start [DIR] [--nodes N])   etcd, kube-apiserver,
#       kube-controller-manager and N kubelet stand-ins (default 1), detached; prints DIR
#   eval "$(tests/k8s/cluster.sh env DIR)"              KUBECONFIG, PATH (kubectl, helm)
#   tests/k8s/cluster.sh stop DIR                       ends them, removes their containers and DIR
exec python3 "$(dirname "$0")/cluster.py" "$@"
