"""HE-FL testbed: 15 machines on one LAN (one switch), node0..node14 with experiment addresses
10.10.1.1..10.10.1.15, on Ubuntu 24.04 (Python 3.12) or 22.04 (Python 3.10: deploy/setup.yml and
deploy/bootstrap.sh add Python 3.12). With the repository's config.json, node0-7 are the clients,
node8-13 the switches and node14 the aggregator. See deploy/README.md."""

# geni-lib, as CloudLab runs it for a profile (Python 2 or 3: no f-strings here)
import geni.portal as portal
import geni.rspec.pg as pg

# CloudLab's standard images; the first is the default
IMAGES = [
    ("urn:publicid:IDN+emulab.net+image+emulab-ops//UBUNTU24-64-STD", "Ubuntu 24.04 LTS"),
    ("urn:publicid:IDN+emulab.net+image+emulab-ops//UBUNTU22-64-STD", "Ubuntu 22.04 LTS"),
]

pc = portal.Context()
pc.defineParameter("nodes", "Number of machines", portal.ParameterType.INTEGER, 15)
pc.defineParameter(
    "image",
    "Disk image (every machine)",
    portal.ParameterType.IMAGE,
    IMAGES[0][0],
    IMAGES,
    longDescription="Ubuntu 22.04's Python is 3.10, too old for the pinned packages: there "
    "deploy/setup.yml installs Python 3.12 (deadsnakes PPA) on every machine, and "
    "deploy/bootstrap.sh on the controller.",
)
pc.defineParameter(
    "hardware",
    "Hardware type (empty: any the cluster has; all machines get the same type)",
    portal.ParameterType.NODETYPE,
    "",
)
pc.defineParameter(
    "bandwidth", "LAN link speed in kbit/s (0: the hardware's)", portal.ParameterType.BANDWIDTH, 0
)
params = pc.bindParameters()
if not 2 <= params.nodes <= 254:
    pc.reportError(portal.ParameterError("between 2 and 254 machines", ["nodes"]))
pc.verifyParameters()

request = pc.makeRequestRSpec()
lan = request.LAN("lan")
if params.bandwidth:
    lan.bandwidth = params.bandwidth
lan.best_effort = False
for i in range(params.nodes):
    node = request.RawPC("node%d" % i)
    node.disk_image = params.image
    if params.hardware:
        node.hardware_type = params.hardware
    iface = node.addInterface("if%d" % i)
    iface.addAddress(pg.IPv4Address("10.10.1.%d" % (i + 1), "255.255.255.0"))
    lan.addInterface(iface)

pc.printRequestRSpec(request)
