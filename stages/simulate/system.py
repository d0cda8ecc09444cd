"""The simulated microservice system: services, call graph, request types (call trees), load curve.

The system is drawn once per dataset from a seeded generator, so two datasets with different
names are different systems while a fixed seed always gives the same one. Names fit the native
format (TrainTicket services, GAIA MicroSS instances, OpenStack services on wally nodes).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from stages.simulate.params import SynthParams

TT_SERVICES = (
    "ts-travel-service", "ts-preserve-service", "ts-auth-service", "ts-verification-code-service",
    "ts-route-service", "ts-station-service", "ts-basic-service", "ts-ticketinfo-service", "ts-order-service",
    "ts-security-service", "ts-contacts-service", "ts-price-service", "ts-train-service", "ts-seat-service",
    "ts-config-service", "ts-user-service", "ts-assurance-service", "ts-food-service", "ts-food-map-service",
    "ts-payment-service", "ts-inside-payment-service", "ts-notification-service", "ts-order-other-service",
    "ts-travel2-service", "ts-route-plan-service", "ts-travel-plan-service", "ts-cancel-service",
)
GAIA_KINDS = ("webservice", "mobservice", "logservice", "dbservice", "redisservice")
# (project, OSProfiler service, programname, python_module): the controller's API services first.
MSDS_SERVICES = (
    ("nova", "api", "nova-api", "nova.osapi_compute.wsgi.server"),
    ("keystone", "public", "keystone", "keystone.common.wsgi"),
    ("glance", "api", "glance-api", "eventlet.wsgi.server"),
    ("neutron", "api", "neutron-server", "neutron.wsgi"),
    ("nova", "scheduler", "nova-scheduler", "nova.scheduler.host_manager"),
    ("nova", "conductor", "nova-conductor", "nova.conductor.manager"),
    ("cinder", "api", "cinder-api", "cinder.api.openstack.wsgi"),
    ("placement", "api", "placement-api", "placement.requestlog"),
)
MSDS_AGENTS = (
    ("nova", "compute", "nova-compute", "nova.compute.manager"),
    ("neutron", "agent", "neutron-openvswitch-agent", "neutron.agent.securitygroups_rpc"),
)
MSDS_NODES = ("wally113", "wally117", "wally122", "wally123", "wally124", "wally125", "wally126", "wally127")

# OpenStack requests are large traces (many RPC / REST calls per request): msds trees are bigger.
TREE_SHAPE = {"msds": (60, 0.7, 0.6), "eadro": (14, 0.45, 0.0), "gaia": (14, 0.45, 0.0)}  # (max nodes, take, repeat)

VERBS = ("query", "get", "create", "update", "check", "find", "list", "verify", "calculate", "reserve")
NOUNS = ("Ticket", "Route", "Station", "Order", "Price", "Seat", "Contacts", "Token", "Trip", "Info", "Train")


def stable_seed(seed: int, *names: str) -> int:
    """A 63-bit seed from the global seed and names; stable across runs (unlike Python's ``hash``)."""
    digest = hashlib.sha256(("\x1f".join([str(seed), *names])).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass(frozen=True)
class Service:
    name: str  # service / instance / program name as the format shows it
    host: str  # metric entity that carries its resources (itself, or its msds node)
    ip: str  # container ip (eadro, gaia) or node name (msds)
    host_ip: str  # gaia: host ip (0.0.0.N); others: same as ip
    port: int
    logs: bool  # silent services write no log lines at all
    module: str  # logger / python module shown in log lines
    project: str  # msds project (nova, glance, ...); otherwise the service name
    os_service: str  # msds OSProfiler 'service' field (api, public, compute, ...)
    self_s: float  # mean own processing time per call (s)
    net_s: float  # mean one-way network latency into this service (s)


@dataclass(frozen=True)
class CallTree:
    """One request type: nodes in DFS pre-order, so every parent precedes its children."""

    services: np.ndarray  # (M,) service index per node
    parents: np.ndarray  # (M,) parent node, -1 for the root
    operations: tuple[str, ...]  # operation name per node


@dataclass(frozen=True)
class System:
    fmt: str
    services: tuple[Service, ...]
    edges: tuple[tuple[int, int], ...]  # caller -> callee in the call graph
    trees: tuple[CallTree, ...]
    weights: np.ndarray  # (K,) probability of each request type
    entities: tuple[str, ...]  # metric entities (services, or msds nodes)
    entity_of_service: np.ndarray  # (S,) entity index per service
    entity_visits: np.ndarray  # (E,) expected visits per request, per entity
    entity_profile: np.ndarray  # (E, 4) base cpu, cpu gain, base memory, network bytes scale

    def service_index(self, name: str) -> int:
        return [s.name for s in self.services].index(name)


def _service_names(fmt: str, n: int, n_nodes: int) -> list[dict]:
    """Format-specific identities of ``n`` services."""
    out: list[dict] = []
    if fmt == "eadro":
        for i in range(n):
            name = TT_SERVICES[i] if i < len(TT_SERVICES) else f"ts-extra{i}-service"
            short = name.removeprefix("ts-").removesuffix("-service").replace("-", "")
            ip = f"172.26.0.{i + 2}"
            out.append(dict(name=name, host=name, ip=ip, host_ip=ip, port=12000 + 31 * i,
                            module=f"{short}.controller.{short.capitalize()}Controller", project=name, os_service=name))
    elif fmt == "gaia":
        for i in range(n):
            kind = GAIA_KINDS[i % len(GAIA_KINDS)]
            number = i // len(GAIA_KINDS) + 1
            name = f"{kind}{number}"
            host_ip = f"0.0.0.{i % 4 + 1}"
            out.append(dict(name=name, host=name, ip=f"172.17.0.{i // 4 + 2}", host_ip=host_ip, port=9380 + i,
                            module=name, project=name, os_service=name))
    else:
        nodes = MSDS_NODES[: max(1, min(n_nodes, len(MSDS_NODES)))]
        controller, computes = nodes[0], (nodes[1:] or nodes[:1])
        # Half the services run on the controller, the rest are agents spread over the compute nodes.
        n_api = min(len(MSDS_SERVICES), max(2, n - len(computes) * len(MSDS_AGENTS), (n + 1) // 2))
        for i in range(n):
            if i < n_api:
                project, os_service, program, module = MSDS_SERVICES[i]
                node = controller
            else:
                j = i - n_api
                project, os_service, program, module = MSDS_AGENTS[(j // len(computes)) % len(MSDS_AGENTS)]
                node = computes[j % len(computes)]
            # A program name may repeat on several nodes; the name keeps the node to stay unique.
            name = program if i < n_api else f"{program}@{node}"
            if i >= n_api and (i - n_api) >= len(computes) * len(MSDS_AGENTS):
                name += f"#{(i - n_api) // (len(computes) * len(MSDS_AGENTS))}"
            out.append(dict(name=name, host=node, ip=node, host_ip=node, port=8770 + i, module=module,
                            project=project, os_service=os_service, program=program))
    return out


def _operation(rng: np.random.Generator) -> str:
    return f"{VERBS[rng.integers(len(VERBS))]}{NOUNS[rng.integers(len(NOUNS))]}"


def _random_dag(n: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Edges i<j only (acyclic); node 0 is the frontend; every node has at least one caller."""
    edges = set()
    for j in range(1, n):
        n_callers = 1 + int(rng.random() < 0.3)
        # Prefer callers near the top so the graph is a few levels deep, not a chain.
        candidates = np.arange(j)
        prefs = 1.0 / (1.0 + candidates) ** 0.7
        callers = rng.choice(candidates, size=min(n_callers, j), replace=False, p=prefs / prefs.sum())
        edges.update((int(c), j) for c in callers)
    return sorted(edges)


def _call_tree(root_path: list[int], children: dict[int, list[int]], rng: np.random.Generator,
               max_nodes: int = 14, take_p: float = 0.45, repeat: float = 0.0) -> tuple[list[int], list[int]]:
    """Grow a call tree from the frontend: follow ``root_path`` then random callees (DFS pre-order).

    ``take_p``: chance that a service calls each of its callees; ``repeat``: chance that a call
    is made once more (OpenStack requests poll and fan out the same RPC several times).
    """
    services: list[int] = []
    parents: list[int] = []
    forced = {(root_path[i], root_path[i + 1]) for i in range(len(root_path) - 1)}

    def visit(svc: int, parent: int, depth: int) -> None:
        me = len(services)
        services.append(svc)
        parents.append(parent)
        for callee in children.get(svc, []):
            if len(services) >= max_nodes:
                return
            take = (svc, callee) in forced or (depth < 4 and rng.random() < take_p)
            if take:
                visit(callee, me, depth + 1)
                while repeat > 0 and len(services) < max_nodes and rng.random() < repeat:
                    visit(callee, me, depth + 1)

    visit(root_path[0], -1, 0)
    return services, parents


def build_system(fmt: str, params: SynthParams, rng: np.random.Generator) -> System:
    n = params.services
    idents = _service_names(fmt, n, params.msds_nodes)
    n_silent = int(round(params.silent_service_fraction * n))
    silent = set(rng.choice(np.arange(1, n), size=min(n_silent, n - 2), replace=False).tolist())
    services = []
    for i, ident in enumerate(idents):
        ident.pop("program", None)
        services.append(Service(
            logs=i not in silent,
            self_s=float(rng.lognormal(np.log(0.004), 0.6)),
            net_s=float(rng.uniform(0.0005, 0.002)),
            **ident,
        ))
    edges = _random_dag(n, rng)
    children: dict[int, list[int]] = {}
    callers: dict[int, list[int]] = {}
    for a, b in edges:
        children.setdefault(a, []).append(b)
        callers.setdefault(b, []).append(a)

    trees: list[tuple[list[int], list[int]]] = []
    max_nodes, take_p, repeat = TREE_SHAPE[fmt]
    for _ in range(params.request_types):
        trees.append(_call_tree([0], children, rng, max_nodes, take_p, repeat))
    # Every service must be reachable by some request type, or faults on it would be invisible.
    covered = {s for t in trees for s in t[0]}
    for svc in range(1, n):
        if svc in covered:
            continue
        path = [svc]
        while path[-1] != 0:
            path.append(callers[path[-1]][0])
        path.reverse()
        tree = _call_tree(path, children, rng, max_nodes, take_p, repeat)
        trees.append(tree)
        covered.update(tree[0])

    call_trees = tuple(
        CallTree(services=np.asarray(s, dtype=np.int64), parents=np.asarray(p, dtype=np.int64),
                 operations=tuple(_operation(rng) for _ in s))
        for s, p in trees
    )
    weights = rng.dirichlet(np.full(len(call_trees), 2.0))

    entities = tuple(dict.fromkeys(s.host for s in services))
    entity_of_service = np.asarray([entities.index(s.host) for s in services], dtype=np.int64)
    service_visits = np.zeros(n)
    for w, tree in zip(weights, call_trees):
        np.add.at(service_visits, tree.services, w)
    entity_visits = np.zeros(len(entities))
    np.add.at(entity_visits, entity_of_service, service_visits)
    E = len(entities)
    profile = np.stack([rng.uniform(0.02, 0.08, E), rng.uniform(0.2, 0.5, E), rng.uniform(0.15, 0.45, E),
                        rng.uniform(1500, 6000, E)], axis=1)
    return System(fmt=fmt, services=tuple(services), edges=tuple(edges), trees=call_trees,
                  weights=weights, entities=entities, entity_of_service=entity_of_service,
                  entity_visits=entity_visits, entity_profile=profile)


def load_curve(t: np.ndarray, t_start: float, params: SynthParams, noise: np.ndarray) -> np.ndarray:
    """Relative load (mean 1): a daily sinusoid peaking in the afternoon, times multiplicative noise."""
    phase = 2 * np.pi * ((t - t_start) / 86400.0)
    base = 1.0 + params.daily_amplitude * np.sin(phase - np.pi / 2)
    return np.clip(base * (1.0 + noise), 0.05, None)
