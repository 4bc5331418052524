"""One reset per guest per file: rows that name the same user again are problems.

Two rows for one guest in one file would reset the guest twice: two invitations, the second
undoing the first, and with two different ``newEmail`` values nobody can tell which one the
admin meant. So a file that names a user twice is refused like any other bad file, with the
line of the repeat and the line that named the user first.

The check keeps memory flat for files of any size. During the validation pass every valid
row's user key goes into a fixed-size Bloom filter (``SIEVE_BITS`` bits, 1 MiB); a key the
filter may have seen before is kept as a candidate. Only when there are candidates does a
second pass over the file (``RepeatCheck``) find, for each candidate key, the line that named
it first, and turn the real repeats into problems; false candidates are cleared there. A file
without repeats is read once unless the filter errs (4 bits of 8,388,608 per key): with 10,000
rows a false candidate turns up in about one file in a million, with 100,000 rows in about one
file in eleven, with 1,000,000 rows about 5,000 rows are candidates; each time the second pass
clears them, at the cost of reading the file once more.

Users are compared by the key the row names them with (a userId case-insensitively, a UPN or an
email address case-folded): the same guest named by userId on one row and by UPN on another is
not recognised, because only Graph knows that they are one user.
"""

from __future__ import annotations

from shared.reset.contract import ResetRequest, repeat_key, user_column

SIEVE_BITS = 1 << 23  # 1 MiB; four bits per key, from two 64-bit hashes
_MASK = SIEVE_BITS - 1


class RepeatSieve:
    """The validation pass's side of the check: a Bloom filter of user keys, and the candidates.

    The bit positions come from Python's own string and tuple hashes (fast, and the same for
    both passes, which run in one process); the candidates are the keys themselves, so the
    second pass compares exact values.
    """

    def __init__(self) -> None:
        self._bits = bytearray(SIEVE_BITS // 8)
        self.candidates: set[str] = set()

    def add(self, request: ResetRequest) -> None:
        key = repeat_key(request)
        first, second, mask, bits = hash(key), hash((key,)), _MASK, self._bits
        # Four bit positions (written out: this runs for every row of every file validated).
        a, b, c, d = first & mask, (first >> 32) & mask, second & mask, (second >> 32) & mask
        ma, mb, mc, md = 1 << (a & 7), 1 << (b & 7), 1 << (c & 7), 1 << (d & 7)
        a, b, c, d = a >> 3, b >> 3, c >> 3, d >> 3
        if bits[a] & ma and bits[b] & mb and bits[c] & mc and bits[d] & md:
            self.candidates.add(key)
            return
        bits[a] |= ma
        bits[b] |= mb
        bits[c] |= mc
        bits[d] |= md


class RepeatCheck:
    """The second pass: give it every row again; ``repeat`` says whether the row names a user again.

    Memory grows only with the candidates (the first line of each candidate key).
    """

    def __init__(self, candidates: set[str]) -> None:
        self._candidates = candidates
        self._first_line: dict[str, int] = {}

    def repeat(self, request: ResetRequest, line: int) -> tuple[str, int] | None:
        """(the column naming the user, the line that named them first) when this row repeats a user."""
        key = repeat_key(request)
        if key not in self._candidates:
            return None
        first = self._first_line.setdefault(key, line)
        return (user_column(request)[0], first) if first != line else None
