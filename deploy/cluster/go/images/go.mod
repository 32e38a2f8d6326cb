// The cluster's own small images: the pod sandbox and the test probe, standard library only.
module chanfleet/deploy/cluster/images

go 1.20
