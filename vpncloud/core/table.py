"""The forwarding table: claims (longest prefix) plus an exact-match cache (spec 11.3, 11.4).

Two structures, like the original's ``ClaimTable``:

* ``cache``: payload address -> (peer, expiry). Filled by learning (switch mode) and by positive claim
  lookups; a cache hit is one dict lookup, which keeps the hot path O(1).
* ``claims``: an ordered list of (peer, range, expiry). A lookup miss scans it: longest prefix wins, the
  first claim wins among equal lengths (a later claim must be *strictly* longer to replace it).

Times are whole seconds (``int(now)``), as in the original. An entry is alive while ``expiry >= now``
and purged when ``expiry < now``.

Quirk 11.3/25.10 (``set_claims`` stops scanning as soon as the new list is used up, so later stale
claims of the same peer survive until their old expiry) is **not** replicated: a stale claim keeps
routing traffic for a range the peer no longer claims for up to ``claim_timeout`` seconds, and because
earlier table entries win on equal prefix length it can even shadow the range's new owner. Nothing on
the wire depends on it, so guarding it is interop-neutral.
"""

from __future__ import annotations

from .types import Range, SocketAddr


class _Claim:
    """A claim with its match key precomputed (the scan runs on every cache miss)."""

    __slots__ = ("addr_len", "expiry", "peer", "prefix", "range", "shift")

    def __init__(self, peer: SocketAddr, claim: Range, expiry: int) -> None:
        self.peer = peer
        self.range = claim
        self.expiry = expiry
        self.addr_len = len(claim.base)
        bits = self.addr_len * 8
        # prefix_len > address bits can only match the identical address (spec 3.3): compare all bits
        self.shift = max(bits - claim.prefix_len, 0)
        self.prefix = int.from_bytes(claim.base, "big") >> self.shift


class ClaimTable:
    """Claims of all peers plus the learned/cached exact addresses. Peers are mapped socket addresses."""

    def __init__(self, cache_timeout: int, claim_timeout: int) -> None:
        self.cache_timeout = int(cache_timeout)
        self.claim_timeout = int(claim_timeout)
        self._cache: dict[bytes, tuple[SocketAddr, int]] = {}
        self._claims: list[_Claim] = []

    # --- hot path --------------------------------------------------------------------------------

    def learn(self, addr: bytes, peer: SocketAddr, now: float) -> None:
        """Cache ``addr -> peer`` for ``cache_timeout`` seconds, replacing any previous entry (11.4)."""
        self._cache[addr] = (peer, int(now) + self.cache_timeout)

    def lookup(self, addr: bytes, now: float) -> SocketAddr | None:
        """The peer for ``addr``: cache first, else the longest matching claim (then cached).

        Expired entries that housekeeping has not purged yet are treated as gone, so the answer does
        not depend on when the tick ran.
        """
        entry = self._cache.get(addr)
        now_s = int(now)
        if entry is not None and entry[1] >= now_s:
            return entry[0]
        best: _Claim | None = None
        best_len = -1
        addr_len = len(addr)
        value = -1
        for claim in self._claims:
            if claim.addr_len == addr_len and claim.range.prefix_len > best_len and claim.expiry >= now_s:
                if value < 0:
                    value = int.from_bytes(addr, "big")
                if value >> claim.shift == claim.prefix:
                    best = claim
                    best_len = claim.range.prefix_len
        if best is None:
            return None
        self._cache[addr] = (best.peer, min(now_s + self.cache_timeout, best.expiry))
        return best.peer

    # --- claims ----------------------------------------------------------------------------------

    def set_claims(self, peer: SocketAddr, ranges: list[Range], now: float) -> None:
        """Replace ``peer``'s claims: kept ones are refreshed, missing ones expire, new ones appended.

        If any claim was dropped, cached lookups pointing to ``peer`` are dropped too (they may have
        come from the dropped claim). Then everything expired is purged.
        """
        now_s = int(now)
        expiry = now_s + self.claim_timeout
        pending = list(dict.fromkeys(ranges))  # order kept, duplicates are redundant
        wanted = set(pending)
        removed = False
        kept: list[_Claim] = []
        for claim in self._claims:
            if claim.peer == peer:
                if claim.range in wanted:
                    claim.expiry = expiry
                    wanted.discard(claim.range)  # a second old copy of the same range is dropped
                else:
                    removed = True
                    continue
            kept.append(claim)
        for claim_range in pending:
            if claim_range in wanted:
                kept.append(_Claim(peer, claim_range, expiry))
        self._claims = kept
        if removed:
            self._drop_cache_of(peer)
        self.housekeep(now)

    def remove_claims(self, peer: SocketAddr) -> None:
        """Forget all claims and cache entries of ``peer`` (closed, timed out or unreachable)."""
        self._claims = [claim for claim in self._claims if claim.peer != peer]
        self._drop_cache_of(peer)

    def housekeep(self, now: float) -> None:
        """Purge claims and cache entries whose expiry lies in the past (``expiry < now``)."""
        now_s = int(now)
        if any(claim.expiry < now_s for claim in self._claims):
            self._claims = [claim for claim in self._claims if claim.expiry >= now_s]
        stale = [addr for addr, (_, expiry) in self._cache.items() if expiry < now_s]
        for addr in stale:
            del self._cache[addr]

    def _drop_cache_of(self, peer: SocketAddr) -> None:
        stale = [addr for addr, (owner, _) in self._cache.items() if owner == peer]
        for addr in stale:
            del self._cache[addr]

    # --- snapshots -------------------------------------------------------------------------------

    def claims(self) -> list[tuple[Range, SocketAddr, float]]:
        """All claims in table order as (range, peer, expiry)."""
        return [(claim.range, claim.peer, claim.expiry) for claim in self._claims]

    def cache(self) -> list[tuple[bytes, SocketAddr, float]]:
        """All cache entries in insertion order as (address, peer, expiry)."""
        return [(addr, peer, expiry) for addr, (peer, expiry) in self._cache.items()]

    def claims_of(self, peer: SocketAddr) -> list[Range]:
        """The ranges currently claimed by ``peer``, in table order."""
        return [claim.range for claim in self._claims if claim.peer == peer]

    def cache_len(self) -> int:
        """Number of cache entries (statsd ``table_cache_entries``)."""
        return len(self._cache)

    def claims_len(self) -> int:
        """Number of claims (statsd ``table_claims``)."""
        return len(self._claims)
