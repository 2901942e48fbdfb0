"""A multiprocessing program that uses all three names, written for the standard library."""

import sys
from multiprocessing import get_context
from multiprocessing.managers import SharedMemoryManager
from multiprocessing.shared_memory import ShareableList, SharedMemory


def square_into(name, slot):
    shm = SharedMemory(name)
    shm.buf[slot] = slot * slot
    shm.close()


def tag(sl, slot):
    sl[slot] = f"{sl[slot]}-{slot}"
    sl.shm.close()


def fill(shm, sl, slot):
    shm.buf[slot] = 100 + slot
    sl[slot] = sl[slot] * 2
    shm.close()
    sl.shm.close()
    return slot


if __name__ == "__main__":
    ctx = get_context(sys.argv[1])

    shm = SharedMemory(create=True, size=8)
    with ctx.Pool(2) as pool:
        pool.starmap(square_into, [(shm.name, slot) for slot in range(8)])
    print("squares", list(shm.buf))
    shm.close()
    shm.unlink()

    sl = ShareableList(["a", "b", "c"])
    workers = [ctx.Process(target=tag, args=(sl, slot)) for slot in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    print("tags", list(sl), [worker.exitcode for worker in workers])
    sl.shm.close()
    sl.shm.unlink()

    with SharedMemoryManager(ctx=ctx) as smm:
        managed_shm = smm.SharedMemory(4)
        managed_sl = smm.ShareableList([1, 2, 3, 4])
        with ctx.Pool(2) as pool:
            done = pool.starmap(fill, [(managed_shm, managed_sl, slot) for slot in range(4)])
        print("managed", sorted(done), list(managed_shm.buf), list(managed_sl))
        names = [managed_shm.name, managed_sl.shm.name]
    for name in names:
        try:
            SharedMemory(name).close()
        except FileNotFoundError:
            print("released", name == names[0])
