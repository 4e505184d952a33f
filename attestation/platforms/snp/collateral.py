"""SEV-SNP collateral: the AMD CRL and the VCEK, given beside the evidence or found in the
verifier's collateral store (:mod:`attestation.collateral`), fetched from AMD KDS.

Cache layout (under the store's directory; names lowercase)::

    amd/<product>/crl-vcek.der                    AMD CRL for VCEK chains (KDS /vcek/v1/<Product>/crl)
    amd/<product>/crl-vlek.der                    AMD CRL for VLEK chains (KDS /vlek/v1/<Product>/crl)
    amd/<product>/vcek/<hwid>-<tcb>.der           a VCEK (KDS /vcek/v1/<Product>/<hwid>?blSPL=...),
                                                  <hwid> as KDS names the chip (64 bytes of CHIP_ID in
                                                  hex, 8 on Turin), <tcb> the 8 REPORTED_TCB bytes in hex

``<product>`` is ``milan``, ``genoa`` or ``turin``. Given beside the evidence (a bundle's
collateral, a collateral directory), the AMD CRL is the file :data:`CRL_FILE`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

from ...abi.x509 import MAX_CERT_INPUT_BYTES
from ...collateral import (
    MAX_CRL_BYTES,
    CollateralFetcher,
    CollateralItem,
    CollateralStore,
    FetchConfig,
    Lookup,
    always_fresh,
    crl_fresh,
    parse_certificate_file,
    parse_crl_file,
)

#: KDS product names of the product lines (lowercase in the cache, capitalised in URLs).
KDS_PRODUCTS = {"milan": "Milan", "genoa": "Genoa", "turin": "Turin"}
SIGNING_KEYS = ("vcek", "vlek")
#: The AMD CRL among collateral files given beside the evidence (a bundle's, a directory's).
CRL_FILE = "amd-crl.der"


def amd_hwid(product: str, chip_id: bytes) -> bytes:
    """The hardware ID KDS names a chip by: CHIP_ID (64 bytes), its first 8 bytes on Turin."""
    return chip_id[:8] if product == "turin" else chip_id


def amd_crl_url(config: FetchConfig, product: str, signing_key: str) -> str:
    return f"{config.amd_base_url.rstrip('/')}/{signing_key}/v1/{KDS_PRODUCTS[product]}/crl"


def amd_vcek_url(config: FetchConfig, product: str, hwid: bytes, tcb: Mapping[str, int]) -> str:
    params = {"blSPL": tcb["bootloader"], "teeSPL": tcb["tee"], "snpSPL": tcb["snp"], "ucodeSPL": tcb["microcode"]}
    if product == "turin":
        params = {"fmcSPL": tcb.get("fmc", 0), **params}
    query = "&".join(f"{name}={int(value):02d}" for name, value in params.items())
    return f"{config.amd_base_url.rstrip('/')}/vcek/v1/{KDS_PRODUCTS[product]}/{hwid.hex()}?{query}"


def amd_crl(
    store: CollateralStore, product: str, signing_key: str, *, at: datetime, max_age: timedelta | None = None
) -> Lookup:
    """The AMD CRL (ARK-signed) for ``product``'s ``signing_key`` ("vcek"/"vlek") chains."""
    if product not in KDS_PRODUCTS or signing_key not in SIGNING_KEYS:
        return Lookup(None, (f"no AMD CRL is known for product {product!r} and signing key {signing_key!r}",))
    path = f"amd/{product}/crl-{signing_key}.der"
    what = f"AMD CRL for {KDS_PRODUCTS[product]} {signing_key.upper()} chains"

    def fetch(fetcher: CollateralFetcher) -> dict[str, bytes]:
        return {path: fetcher.get(amd_crl_url(fetcher.config, product, signing_key)).body}

    return store.lookup(CollateralItem(path, what, MAX_CRL_BYTES, parse_crl_file, crl_fresh(what), fetch), at, max_age)


def amd_vcek(
    store: CollateralStore, product: str, chip_id: bytes, tcb_raw: bytes, tcb: Mapping[str, int], *, at: datetime
) -> Lookup:
    """The VCEK for the chip ``chip_id`` at the reported TCB (``tcb_raw``: the report's 8
    REPORTED_TCB bytes, naming the file; ``tcb``: its components, for KDS)."""
    if product not in KDS_PRODUCTS:
        return Lookup(None, (f"no VCEK can be looked up for product {product!r}",))
    hwid = amd_hwid(product, chip_id)
    path = f"amd/{product}/vcek/{hwid.hex()}-{tcb_raw.hex()}.der"
    what = f"{KDS_PRODUCTS[product]} VCEK"

    def fetch(fetcher: CollateralFetcher) -> dict[str, bytes]:
        return {path: fetcher.get(amd_vcek_url(fetcher.config, product, hwid, tcb)).body}

    return store.lookup(
        CollateralItem(path, what, MAX_CERT_INPUT_BYTES, parse_certificate_file, always_fresh, fetch), at, None
    )


__all__ = ["CRL_FILE", "KDS_PRODUCTS", "SIGNING_KEYS", "amd_crl", "amd_crl_url", "amd_hwid", "amd_vcek", "amd_vcek_url"]
