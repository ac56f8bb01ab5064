"""Planted: one pure-Python function takes nearly all the CPU."""


def compute_primes(limit: int) -> list[int]:
    primes = []
    for n in range(2, limit):
        for p in primes:
            if p * p > n:
                primes.append(n)
                break
            if n % p == 0:
                break
        else:
            primes.append(n)
    return primes


def main() -> None:
    for _ in range(3):
        compute_primes(150_000)
