"""How the processes of a ``spread: tasks`` sweep share its tasks: largest relation first, each task
claimed by exactly one process, done tasks skipped."""

import json
import threading
from pathlib import Path

from lre_pl.dataset.relations import load_relation
from lre_pl.experiments.sweep.runner import claimed_tasks, largest_first
from lre_pl.files import create_exclusively
from lre_pl.protocol.folder import SweepFolder


def test_tasks_are_claimed_largest_relation_first():
    tasks = [(relation, seed) for relation in ("country capital city", "person occupation", "adjective comparative")
             for seed in (0, 1)]  # fmt: skip
    sizes = {}
    for relation, _ in tasks:  # the sizes read from the files themselves: distinct pairs
        data = json.loads(Path(load_relation(relation).source).read_text())
        sizes[relation] = len({(s["subject"].strip(), s["object"].strip()) for s in data["samples"]})
    assert len(set(sizes.values())) == 3
    by_size = sorted(sizes, key=sizes.get, reverse=True)
    assert largest_first(tasks, {relation: relation for relation in sizes}) == [
        (relation, seed) for relation in by_size for seed in (0, 1)
    ]


def test_two_claimers_over_one_folder_never_take_the_same_task(tmp_path):
    """Two claimers taking turns (each asks for its next task when it has done one) share the tasks
    without overlap, in the given order; a task whose rows and bundle exist is taken by neither."""
    folder = SweepFolder(tmp_path)
    tasks = [(f"relation {i}", seed) for i in range(5) for seed in (0, 1)]
    done = tasks[3]
    for path in (folder.rows(*done), folder.bundle(*done)):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("whole")
    claimers = {0: claimed_tasks(folder, tasks, rank=0), 1: claimed_tasks(folder, tasks, rank=1)}
    taken = {0: [], 1: []}
    finished = set()
    while len(finished) < 2:
        for rank, claimer in claimers.items():
            if rank not in finished:
                task = next(claimer, None)
                finished.add(rank) if task is None else taken[rank].append(task)
    assert not set(taken[0]) & set(taken[1])
    assert sorted(taken[0] + taken[1]) == sorted(task for task in tasks if task != done)
    assert taken[0] == [tasks[0], tasks[2], tasks[5], tasks[7], tasks[9]]  # turns: 0, 1, 0, (done), 1, ...
    assert (tmp_path / "claims" / "relation_0__trial_0").read_text().startswith("rank 0, pid ")


def test_only_one_of_many_racing_creators_gets_a_file(tmp_path):
    winners = []
    start = threading.Barrier(8)

    def race(i):
        start.wait()
        for task in range(200):
            if create_exclusively(tmp_path / "claims" / str(task), str(i)):
                winners.append(task)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(winners) == list(range(200))
