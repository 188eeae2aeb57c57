"""Where a model fails across a data set: spectral relevance analysis (SpRAy, Lapuschkin et al. 2019, the
analysis that found the Pascal VOC horse/watermark shortcut).

Every selected image is explained (any method of fvgraph.methods.registry); its map is reduced over channels
(signed sum, or the sum of magnitudes), downsized to size x size by area averaging and normalized to a sum
of absolute values of 1, so that clusters compare *where* the model looked, not how strongly. The maps are
clustered by spectral clustering (scikit-learn) on a symmetric k-nearest-neighbour graph (locally scaled
weights); the number of clusters, unless given, is where the largest relative gap lies among the smallest
eigenvalues of that graph's normalized Laplacian (the eigengap: k groups joined by few edges give k
eigenvalues near 0; `eigengap` says why relative, and why at least 2). A
shortcut (a watermark, a border, a tag) shows as a cluster of its own whose mean map sits on it.

Which images are explained (`select`):
- "labelled": the inputs are one folder whose sub-folders name classes (a class index, or a label of the
  model's class names) and hold every image: with target=K the images of K's folder, explained for K
  whatever the model predicts; with target=None every image, explained for its folder's class.
- "predicted": with target=K every image the model gives class K, explained for K; with target=None every
  image, explained for its predicted class.
- "auto" (the default): "labelled" where the inputs are such a folder, else "predicted".

The images stream through the model in batches (on N processes or Ray: fvgraph.batch.map_jobs); only the
small maps are kept (size * size floats per image). Unreadable images are skipped and listed.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError

SELECT = ("auto", "labelled", "predicted")
REDUCE = ("sum", "abs")


@dataclass
class Cluster:
    index: int
    members: list          # output names of the images (fvgraph.batch.image_files), most typical first
    files: list            # their paths, in the same order
    mean: np.ndarray       # (size, size): the mean of the members' normalized maps

    @property
    def size(self) -> int:
        return len(self.members)


@dataclass
class Clusters:
    clusters: list                 # Cluster, largest first
    names: list                    # every clustered image's output name
    files: list                    # and its path
    labels: np.ndarray             # cluster index per image
    maps: np.ndarray               # (n, size, size) normalized maps
    eigenvalues: np.ndarray        # the smallest eigenvalues of the normalized Laplacian
    embedding: np.ndarray          # (n, 2)
    classes: list                  # the class each image was explained for
    predicted: list                # the class the model gave each image
    target: object = None
    method: str = ""
    select: str = "predicted"
    neighbors: int = 0
    reduce: str = "sum"
    failed: dict = field(default_factory=dict)   # {image: why it could not be read}
    left_out: int = 0                            # readable images not selected (another predicted class)

    @property
    def n_clusters(self) -> int:
        return len(self.clusters)

    def to_json(self) -> dict:
        return {"target": None if self.target is None else int(self.target), "method": self.method,
                "select": self.select, "reduce": self.reduce, "size": int(self.maps.shape[-1]),
                "neighbors": self.neighbors, "images": len(self.names), "left_out": self.left_out,
                "eigenvalues": [float(v) for v in self.eigenvalues],
                "clusters": [{"index": c.index, "size": c.size, "members": list(c.members),
                              "files": [str(f) for f in c.files], "mean": f"cluster_{c.index:02d}_mean.npy"}
                             for c in self.clusters],
                "embedding": {n: [float(v) for v in e] for n, e in zip(self.names, self.embedding)},
                "failed": {str(k): str(v) for k, v in self.failed.items()}}


# ------------------------------------------------------------------------------------------ the maps
def downsize(m: np.ndarray, size: int) -> np.ndarray:
    """A 2-D map to (size, size) by area averaging (PIL's box filter on float32)."""
    from PIL import Image
    m = np.ascontiguousarray(m, np.float32)
    if m.shape == (size, size):
        return m.copy()
    return np.asarray(Image.fromarray(m, mode="F").resize((size, size), Image.BOX), np.float32)


def prepare_map(relevance: np.ndarray, size: int = 32, reduce: str = "sum") -> np.ndarray:
    """One sample's relevance ((C, H, W) or (H, W)) as SpRAy compares it: summed over channels (signed, or
    magnitudes with reduce="abs"), downsized to (size, size), sum of absolute values 1 (a zero map stays 0)."""
    if reduce not in REDUCE:
        raise InputError(f"reduce must be one of {', '.join(REDUCE)}, got {reduce!r}")
    r = np.nan_to_num(np.asarray(relevance, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if reduce == "abs":
        r = np.abs(r)
    if r.ndim == 3:
        r = r.sum(axis=0)
    if r.ndim != 2:
        raise InputError(f"a map must be (H, W) or (C, H, W), got shape {np.shape(relevance)}")
    m = downsize(r, size).astype(np.float64)
    total = np.abs(m).sum()
    return (m / total if total > 0 else m).astype(np.float32)


# ------------------------------------------------------------------------------------------ clustering
def default_neighbors(n: int) -> int:
    """sqrt(n), between 2 and 10 (fewer than n): enough edges to keep a group connected, few enough that
    groups of a tenth of the data stay apart."""
    return int(max(1, min(n - 1, max(2, min(10, round(np.sqrt(n)))))))


def knn_affinity(X: np.ndarray, neighbors: int):
    """The symmetric k-nearest-neighbour affinity (sparse): i and j joined when either is among the other's
    k nearest (Euclidean), weighted exp(-d^2 / (s_i s_j)) with s_i the distance to i's k-th neighbour
    (local scaling, Zelnik-Manor & Perona 2004: a dense group and a spread-out one are joined alike)."""
    from scipy import sparse
    from sklearn.neighbors import kneighbors_graph
    D = kneighbors_graph(X, n_neighbors=neighbors, mode="distance", include_self=False).tocoo()
    far = np.zeros(X.shape[0])
    np.maximum.at(far, D.row, D.data)
    floor = max(float(np.median(far)) * 1e-6, 1e-300)
    far = np.maximum(far, floor)
    w = np.exp(-(D.data ** 2) / (far[D.row] * far[D.col]))
    A = sparse.csr_matrix((np.maximum(w, 1e-300), (D.row, D.col)), shape=D.shape)
    return A.maximum(A.T).tocsr()


def laplacian_eigenvalues(A, count: int) -> np.ndarray:
    """The `count` smallest eigenvalues of the normalized Laplacian I - D^-1/2 A D^-1/2 (ascending)."""
    from scipy.sparse import csgraph
    n = A.shape[0]
    count = min(count, n)
    L = csgraph.laplacian(A.astype(np.float64), normed=True)
    if n <= 2000:
        vals = np.linalg.eigvalsh(L.toarray())[:count]
    else:  # the largest of D^-1/2 A D^-1/2 = I - L converge where L's smallest would not
        from scipy.sparse import identity
        from scipy.sparse.linalg import eigsh
        vals = np.sort(1.0 - eigsh(identity(n) - L, k=count, which="LA", return_eigenvectors=False))
    return np.clip(vals, 0.0, 2.0)


def eigengap(eigenvalues: np.ndarray, max_clusters: int) -> int:
    """The number of clusters k (2 <= k <= max_clusters) after which the eigenvalues jump most, relative to
    where they land: the largest (l_k - l_{k-1}) / l_k. Relative, because the absolute gaps grow along the
    spectrum of a data set without clean groups and would favour many clusters; at least 2, because l_0 = 0
    makes the trivial split the largest always (a search for failures asks how the images divide)."""
    v = np.asarray(eigenvalues, np.float64)[:max_clusters + 1]
    if len(v) < 3:
        return max(1, len(v) - 1)
    scores = [(v[k] - v[k - 1]) / max(v[k], 1e-12) for k in range(2, len(v))]
    return int(np.argmax(scores)) + 2


def cluster_maps(maps, n_clusters=None, neighbors=None, max_clusters=10, seed=0):
    """SpRAy's clustering of (n, ...) maps: (labels (n,), eigenvalues, neighbors used, affinity). Labels
    are numbered by cluster size (largest first, ties by first member), so they are reproducible."""
    from sklearn.cluster import SpectralClustering
    X = np.asarray(maps, np.float64).reshape(len(maps), -1)
    n = len(X)
    if n == 0:
        raise InputError("no maps to cluster")
    if n < 3:
        return np.zeros(n, np.int64), np.zeros(n), 0, None
    k = default_neighbors(n) if neighbors is None else int(neighbors)
    if not 1 <= k < n:
        raise InputError(f"neighbors must be between 1 and {n - 1} for {n} maps, got {neighbors}")
    A = knn_affinity(X, k)
    max_clusters = int(min(max_clusters, n - 1))
    eig = laplacian_eigenvalues(A, max_clusters + 1)
    if n_clusters is None:
        n_clusters = eigengap(eig, max_clusters)
    elif not 1 <= int(n_clusters) <= n:
        raise InputError(f"n_clusters must be between 1 and {n}, got {n_clusters}")
    n_clusters = int(n_clusters)
    if n_clusters == 1:
        labels = np.zeros(n, np.int64)
    else:
        with warnings.catch_warnings():  # separate groups are the point: "not fully connected" is expected
            warnings.simplefilter("ignore", UserWarning)
            sc = SpectralClustering(n_clusters=n_clusters, affinity="precomputed", assign_labels="cluster_qr",
                                    random_state=seed)
            labels = sc.fit_predict(A)
    return _renumber(labels), eig, k, A


def _renumber(labels):
    labels = np.asarray(labels)
    order = sorted(set(labels.tolist()), key=lambda c: (-(labels == c).sum(), int(np.argmax(labels == c))))
    new = {c: i for i, c in enumerate(order)}
    return np.array([new[c] for c in labels.tolist()], np.int64)


def embed(maps, affinity=None, how="tsne", seed=0) -> np.ndarray:
    """A 2-D embedding of the maps: t-SNE of the maps ("tsne"), or the spectral embedding of the affinity
    ("spectral"); fewer than 5 maps are laid out by their first two principal components."""
    X = np.asarray(maps, np.float64).reshape(len(maps), -1)
    n = len(X)
    if how not in ("tsne", "spectral"):
        raise InputError(f"embedding must be 'tsne' or 'spectral', got {how!r}")
    if n < 5 or (how == "spectral" and affinity is None):
        Xc = X - X.mean(axis=0)
        u, s, _ = np.linalg.svd(Xc, full_matrices=False) if n else (np.zeros((0, 0)), np.zeros(0), None)
        out = np.zeros((n, 2))
        out[:, :min(2, u.shape[1])] = (u * s)[:, :2]
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if how == "spectral":
            from sklearn.manifold import SpectralEmbedding
            return SpectralEmbedding(n_components=2, affinity="precomputed", random_state=seed).fit_transform(
                affinity.toarray() if n <= 2000 else affinity)
        from sklearn.manifold import TSNE
        return TSNE(n_components=2, perplexity=float(min(30.0, (n - 1) / 3.0)), init="pca",
                    learning_rate="auto", random_state=seed).fit_transform(X)


# ------------------------------------------------------------------------------------------ the images
def folder_labels(model, inputs) -> dict | None:
    """{image path: class index} when `inputs` is one folder whose every image sits in a sub-folder named
    by a class (its index, or its label in the model's class names); else None."""
    from ..batch import IMAGE_SUFFIXES
    inputs = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    if len(inputs) != 1 or not Path(inputs[0]).is_dir():
        return None
    root = Path(inputs[0])
    names = model.class_names() or []
    index = {str(n): i for i, n in enumerate(names)}
    out = {}
    for f in root.rglob("*"):
        if f.suffix.lower() not in IMAGE_SUFFIXES or not f.is_file():
            continue
        parts = f.relative_to(root).parts
        if len(parts) != 2:
            return None
        sub = parts[0]
        if sub in index:
            out[str(f)] = index[sub]
        elif sub.isdigit() and (not names or int(sub) < len(names)):
            out[str(f)] = int(sub)
        else:
            return None
    return out or None


def _maps_job(model, job):
    """A worker's batch: ([(name, map or None, class explained, class predicted)], {path: why unreadable})."""
    from .examples import _readable_batch
    from .registry import run_spec
    items, method, size, reduce, layer, params = job
    paths = [p for p, _, _ in items]
    x, ok, failed = _readable_batch(model, paths)
    if x is None:
        return [], failed
    by_path = {p: (n, t) for p, n, t in items}
    wanted = [by_path[p][1] for p in ok]
    target = None if all(t is None for t in wanted) else [(-1 if t is None else int(t)) for t in wanted]
    e = run_spec(model, x, method, target, params, layer=layer)
    classes = np.asarray(e.target).reshape(-1) if isinstance(e.target, np.ndarray) and \
        e.target.dtype.kind in "iu" and e.target.size == len(ok) else np.array(
            [-1 if t is None else t for t in wanted])
    out = np.asarray(e.output) if e.output is not None else None
    if out is not None and out.ndim >= 2 and out.shape[0] == len(ok):
        predicted = out.reshape(len(ok), -1).argmax(axis=1)
    else:
        predicted = np.asarray(model.run(x)[0]).reshape(len(ok), -1).argmax(axis=1)
    rows = []
    for j, p in enumerate(ok):
        rows.append((by_path[p][0], prepare_map(e.relevance[j], size, reduce), int(classes[j]), int(predicted[j])))
    return rows, failed


def clusters(model, images, target=None, method="lrp-epsilon", size=32, n_clusters=None, seed=0, workers=1,
             ray_address=None, quiet=None, select="auto", reduce="sum", neighbors=None, max_clusters=10,
             embedding="tsne", batch=16, params=None, layer=None, model_path=None, load_options=None,
             failed=None, state_file=None) -> Clusters:
    """SpRAy over `images` (image files and folders, expanded by fvgraph.batch.image_files): which images
    (target, select) as the module's docstring says; method: any method text of the registry
    ('lrp-epsilon:epsilon=0.01'), params/layer as run_spec takes them; n_clusters: None for the eigengap.
    Unreadable images are skipped: `failed` (a dict) receives {image: reason}, else one warning lists them
    (they are in the result's `failed` too). workers/ray_address: fvgraph.batch.map_jobs (the model is
    loaded from model_path, default model.source, with load_options). state_file: an .npz where each
    explained image's small map is kept (atomically, after a batch whenever the last save took under a tenth
    of the time since) with the model's sha256, the options and the image's content hash: an interrupted run
    resumes there; a state of another model or other options is started over, an image since changed is
    explained again (a model without a file is never resumed)."""
    from ..batch import image_files, map_jobs
    from .examples import _report_failed
    from .reconstruction import Progress
    if select not in SELECT:
        raise InputError(f"select must be one of {', '.join(SELECT)}, got {select!r}")
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise InputError(f"size must be a positive integer, got {size!r}")
    if target is not None and (isinstance(target, bool) or not isinstance(target, (int, np.integer))):
        raise InputError(f"target must be a class index or None, got {target!r}")
    from .registry import lookup, parse_spec
    lookup(parse_spec(method)[0])  # an unknown method: one line before any work
    inputs = [images] if isinstance(images, (str, Path)) else list(images)
    files = image_files(inputs)
    if not files:
        raise InputError(f"no images found in {', '.join(map(str, inputs))}")
    labels = folder_labels(model, inputs) if select in ("auto", "labelled") else None
    if select == "labelled" and labels is None:
        raise InputError(f"select='labelled' needs one folder whose sub-folders are class indices or names "
                         f"holding every image; {', '.join(map(str, inputs))} is not")
    used = "labelled" if labels is not None else "predicted"
    if used == "labelled":
        items = [(str(f), n, labels[str(f)]) for f, n in files if target is None or labels[str(f)] == int(target)]
        if not items:
            raise InputError(f"no images of class {target} in {inputs[0]} (its sub-folders: "
                             f"{', '.join(sorted({Path(p).parent.name for p in labels}))})")
    else:
        items = [(str(f), n, None if target is None else int(target)) for f, n in files]
    paths = {n: p for p, n, _ in items}
    source = model_path or model.source
    state = _State(state_file, model, source, {"method": str(method), "size": int(size), "reduce": reduce,
                                              "layer": layer, "params": params or {}, "target": target,
                                              "select": used}, [p for p, _, _ in items])
    got = state.restore()
    todo = [it for it in items if it[1] not in got]
    jobs = [(todo[i:i + batch], str(method), int(size), reduce, layer, params or {})
            for i in range(0, len(todo), batch)]
    bar = Progress(len(items), "clusters", quiet)
    results = map_jobs(source, jobs, _maps_job, workers, ray_address, load_options) \
        if (workers > 1 or ray_address) else (_maps_job(model, j) for j in jobs)
    bad, count = {}, len(got)
    for rows, why in results:
        for name, m, cls, pred in rows:
            got[name] = (m, cls, pred)
        bad.update(why)
        count += len(rows) + len(why)
        state.save(got, paths)
        bar.update(count)
    state.save(got, paths, force=True)
    _report_failed(bad, failed)
    order = [n for _, n, _ in items if n in got]  # the inputs' order, whatever order workers finished in
    if used == "predicted" and target is not None:
        kept = [n for n in order if got[n][2] == int(target)]
    else:
        kept = order
    if not kept:
        why = f"the model gives class {target} to none of the {len(order)} readable image(s)" if order else \
            "no readable images"
        raise InputError(f"nothing to cluster: {why}")
    maps = np.stack([got[n][0] for n in kept])
    labels_, eig, k, A = cluster_maps(maps, n_clusters, neighbors, max_clusters, seed)
    emb = embed(maps, A, embedding, seed)
    groups = []
    for c in range(int(labels_.max()) + 1):
        idx = np.flatnonzero(labels_ == c)
        mean = maps[idx].mean(axis=0)
        near = idx[np.argsort(((maps[idx] - mean) ** 2).reshape(len(idx), -1).sum(axis=1), kind="stable")]
        groups.append(Cluster(c, [kept[i] for i in near], [paths[kept[i]] for i in near], mean.astype(np.float32)))
    return Clusters(groups, kept, [paths[n] for n in kept], labels_, maps, eig, emb,
                    [got[n][1] for n in kept], [got[n][2] for n in kept], target, str(method), used, k, reduce,
                    dict(bad), len(order) - len(kept))


class _State:
    """clusters' resumable state: {header, per image: content sha256, map, classes} in one .npz."""

    def __init__(self, path, model, source, options, files):
        from ..files import fingerprint
        from .examples import _hashes, _model_sha
        self.path = Path(path) if path else None
        self.hashes = _hashes(files) if self.path else {}
        sha = _model_sha(model, source) if self.path else None
        self.header = json.dumps({"schema": "fvgraph.clusters/1", "model_sha256": sha,
                                  "preprocess": fingerprint(model.preprocessing()), "options": fingerprint(options)},
                                 sort_keys=True, default=str)
        self.usable = sha is not None
        self.next_save = 0.0

    def restore(self) -> dict:
        """{name: (map, class, predicted)} of the images done before on the same content."""
        if not (self.path and self.usable and self.path.exists()):
            return {}
        try:
            with np.load(self.path, allow_pickle=False) as z:
                if str(z["header"]) != self.header:
                    return {}
                names, files, shas = list(z["names"]), list(z["files"]), list(z["sha256"])
                maps, classes = z["maps"], z["classes"]
        except (OSError, ValueError, KeyError):
            return {}
        return {str(n): (maps[i].astype(np.float32), int(classes[i, 0]), int(classes[i, 1]))
                for i, (n, f, h) in enumerate(zip(names, files, shas)) if self.hashes.get(str(f)) == str(h)}

    def save(self, got, paths, force=False):
        import time

        from ..files import write_atomic
        if not (self.path and self.usable and got) or (not force and time.monotonic() < self.next_save):
            return
        t0 = time.monotonic()
        names = [n for n in got if self.hashes.get(paths.get(n)) is not None]
        arrays = {"header": np.array(self.header), "names": np.array(names, dtype=str),
                  "files": np.array([paths[n] for n in names], dtype=str),
                  "sha256": np.array([self.hashes[paths[n]] for n in names], dtype=str),
                  "maps": np.stack([got[n][0] for n in names]) if names else np.zeros((0, 1, 1), np.float32),
                  "classes": np.array([[got[n][1], got[n][2]] for n in names], np.int64).reshape(-1, 2)}

        def write(t):
            with open(t, "wb") as f:
                np.savez(f, **arrays)
        write_atomic(self.path, write)
        self.next_save = time.monotonic() + 10 * (time.monotonic() - t0)


# ------------------------------------------------------------------------------------------ pictures
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def _colour(i):
    if i < len(PALETTE):
        return PALETTE[i]
    rng = np.random.default_rng(i)
    return tuple(int(v) for v in rng.integers(40, 220, 3))


def _map_picture(m, reduce, side):
    from PIL import Image

    from ..render import picture
    pic = picture(m, "heat" if reduce == "abs" else "signed")
    return np.asarray(Image.fromarray(pic).resize((side, side), Image.NEAREST))


def _thumbnail(path, side):
    from PIL import Image

    from ..image import read_rgb
    try:
        rgb = read_rgb(path)
    except Exception:  # a file gone or changed since: a grey tile, the picture still drawn
        return np.full((side, side, 3), 128, np.uint8)
    a = np.clip(np.round(np.asarray(rgb, np.float64) * 255), 0, 255).astype(np.uint8) if \
        np.asarray(rgb).dtype != np.uint8 else np.asarray(rgb)
    return np.asarray(Image.fromarray(a).resize((side, side), Image.BILINEAR))


def cluster_picture(result: Clusters, cluster: Cluster, members=8, side=96) -> np.ndarray:
    """The cluster's mean map beside a strip of its most typical members (their pictures above, their maps
    below), with a title line."""
    from PIL import Image, ImageDraw
    shown = list(range(min(members, cluster.size)))
    index = {n: i for i, n in enumerate(result.names)}
    pad, title = 4, 16
    width = pad + (2 * side + pad) + len(shown) * (side + pad)
    height = title + pad + 2 * side + pad
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, 2), f"cluster {cluster.index}: {cluster.size} image(s) of {len(result.names)}", fill=(0, 0, 0))
    canvas.paste(Image.fromarray(_map_picture(cluster.mean, result.reduce, 2 * side)), (pad, title + pad))
    x0 = pad + 2 * side + pad
    for j in shown:
        x = x0 + j * (side + pad)
        canvas.paste(Image.fromarray(_thumbnail(cluster.files[j], side)), (x, title + pad))
        m = result.maps[index[cluster.members[j]]]
        canvas.paste(Image.fromarray(_map_picture(m, result.reduce, side)), (x, title + pad + side))
    return np.asarray(canvas)


def embedding_picture(result: Clusters, side=480) -> np.ndarray:
    """The 2-D embedding as a scatter plot, one colour per cluster, with a legend."""
    from PIL import Image, ImageDraw
    margin, legend = 24, 110
    canvas = Image.new("RGB", (side + legend, side), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    e = np.asarray(result.embedding, np.float64)
    lo, hi = e.min(axis=0) if len(e) else np.zeros(2), e.max(axis=0) if len(e) else np.ones(2)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    xy = margin + (e - lo) / span * (side - 2 * margin)
    draw.rectangle([margin // 2, margin // 2, side - margin // 2, side - margin // 2], outline=(200, 200, 200))
    r = 4 if len(e) < 500 else 2
    for (x, y), c in zip(xy, result.labels):
        y = side - y  # up is up
        draw.ellipse([x - r, y - r, x + r, y + r], fill=_colour(int(c)), outline=(0, 0, 0) if r > 2 else None)
    for c in result.clusters[:24]:
        y = margin + 16 * c.index
        draw.rectangle([side + 4, y, side + 14, y + 10], fill=_colour(c.index))
        draw.text((side + 18, y - 1), f"{c.index}: {c.size}", fill=(0, 0, 0))
    return np.asarray(canvas)


def write_clusters(result: Clusters, out, overwrite=False) -> list:
    """clusters.json, embedding.png and per cluster cluster_NN.png (mean map and members) and
    cluster_NN_mean.npy, each written atomically; an existing file is refused (before any is written)
    unless overwrite. Returns the paths written."""
    from PIL import Image

    from ..errors import refuse_overwrite
    from ..files import write_atomic, write_text
    out = Path(out)
    planned = [out / "clusters.json", out / "embedding.png"]
    for c in result.clusters:
        planned += [out / f"cluster_{c.index:02d}.png", out / f"cluster_{c.index:02d}_mean.npy"]
    for p in planned:
        refuse_overwrite(p, overwrite, other_out=True)
    out.mkdir(parents=True, exist_ok=True)

    def png(path, pic):
        write_atomic(path, lambda t: Image.fromarray(pic).save(t, format="PNG"))
    for c in result.clusters:
        png(out / f"cluster_{c.index:02d}.png", cluster_picture(result, c))
        write_atomic(out / f"cluster_{c.index:02d}_mean.npy", lambda t, m=c.mean: np.save(t, m))
    png(out / "embedding.png", embedding_picture(result))
    write_text(out / "clusters.json", json.dumps(result.to_json(), indent=1))
    return planned
