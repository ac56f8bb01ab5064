"""Planted: a bank moves money between accounts, each account guarded by its own lock;
transfer() locks the payer's account, then the payee's. Two tellers move money between
the same two accounts in opposite directions at the same moment: each holds one account's
lock and waits forever for the other's. The process hangs (the threads are daemons, so
main returns and the window is written while they are still stuck)."""

import threading
import time


class Account:
    def __init__(self, name: str, balance: int) -> None:
        self.name, self.balance = name, balance
        self.lock = threading.Lock()


def transfer(payer: Account, payee: Account, amount: int) -> None:
    with payer.lock:
        time.sleep(0.01)  # the fraud check
        with payee.lock:  # the second lock, taken in the callers' order: DEADLOCK LINE
            payer.balance -= amount
            payee.balance += amount


def teller(payer: Account, payee: Account, start: threading.Event) -> None:
    start.wait()
    for _ in range(3):
        transfer(payer, payee, 10)


def main() -> None:
    alice, bob = Account("alice", 100), Account("bob", 100)
    start = threading.Event()
    threads = [
        threading.Thread(target=teller, args=(alice, bob, start), name="teller-1", daemon=True),
        threading.Thread(target=teller, args=(bob, alice, start), name="teller-2", daemon=True),
    ]
    for t in threads:
        t.start()
    start.set()
    time.sleep(1.0)  # the service hangs; the window is written now
