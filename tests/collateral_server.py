"""Test helper: a real loopback HTTP server playing AMD KDS and Intel PCS for the simulated
vendors (the paths and issuer-chain headers of the real services)."""

from __future__ import annotations

import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from attestation.platforms.snp.collateral import amd_crl_url, amd_vcek_url
from attestation.platforms.tdx.collateral import intel_pck_crl_url, intel_qe_identity_url, intel_tcb_info_url
from enclave.simulated.pki import SimulatedPki

ROOT_CRL_PATH = "/IntelSGXRootCA.der"


@dataclass
class Route:
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 200
    delay: float = 0.0
    #: Content-Length to announce (default: the body's), e.g. more than is sent
    declared_length: int | None = None


class VendorServer:
    """``routes`` maps a path with its query ("/vcek/v1/Milan/crl") to a :class:`Route`;
    ``requests`` lists every path asked for."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                server.requests.append(self.path)
                route = server.routes.get(self.path)
                if route is None:
                    self.send_error(404)
                    return
                if route.delay:
                    time.sleep(route.delay)
                self.send_response(route.status)
                for name, value in route.headers.items():
                    self.send_header(name, value)
                self.send_header(
                    "Content-Length", str(len(route.body) if route.declared_length is None else route.declared_length)
                )
                self.end_headers()
                try:
                    self.wfile.write(route.body)
                except OSError:
                    pass
                if route.declared_length is not None:
                    self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def serve_simulated(self, pki: SimulatedPki, files: dict[str, bytes]) -> None:
        """Serve the simulated collateral ``files`` (cache-relative path -> bytes, as
        :func:`enclave.simulated.collateral.simulated_collateral_files` gives) and the VCEK at
        the vendors' paths."""
        from attestation.collateral import CollateralFetcher, FetchConfig
        from enclave.simulated.pki import SIM_FMSPC, SIM_SNP_TCB

        fetcher = CollateralFetcher(
            FetchConfig(amd_base_url=self.url, intel_base_url=self.url, intel_root_ca_crl_url=self.url + ROOT_CRL_PATH)
        )

        def path(url: str) -> str:
            parts = urllib.parse.urlsplit(url)
            return parts.path + (f"?{parts.query}" if parts.query else "")

        def chain(name: str) -> str:
            return urllib.parse.quote(files[name].decode())

        self.routes[path(amd_crl_url(fetcher.config, "milan", "vcek"))] = Route(files["amd/milan/crl-vcek.der"])
        self.routes[path(amd_vcek_url(fetcher.config, "milan", pki.amd.chip_id, SIM_SNP_TCB))] = Route(pki.amd.vcek.der)
        self.routes[path(intel_tcb_info_url(fetcher.config, SIM_FMSPC))] = Route(
            files[f"intel/tcb-info-fmspc-{SIM_FMSPC.hex()}.json"],
            {"TCB-Info-Issuer-Chain": chain("intel/tcb-info-issuer-chain.pem")},
        )
        self.routes[path(intel_qe_identity_url(fetcher.config))] = Route(
            files["intel/qe-identity.json"],
            {"SGX-Enclave-Identity-Issuer-Chain": chain("intel/qe-identity-issuer-chain.pem")},
        )
        self.routes[path(intel_pck_crl_url(fetcher.config, "platform"))] = Route(
            files["intel/pck-platform-crl.der"],
            {"SGX-PCK-CRL-Issuer-Chain": chain("intel/pck-platform-crl-issuer-chain.pem")},
        )
        self.routes[ROOT_CRL_PATH] = Route(files["intel/root-ca-crl.der"])

    def config_kwargs(self) -> dict[str, str]:
        return {"amd_base_url": self.url, "intel_base_url": self.url, "intel_root_ca_crl_url": self.url + ROOT_CRL_PATH}


def serving() -> Iterator[VendorServer]:
    server = VendorServer()
    try:
        yield server
    finally:
        server.close()
