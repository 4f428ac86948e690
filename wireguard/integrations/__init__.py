"""HTTP clients through a :class:`~wireguard.io.rootless.RootlessTunnel`, in the
same process and without monkeypatching (optional extras; nothing here is
imported by the package itself):

* :mod:`wireguard.integrations.httpcore`: an httpcore network backend
  (``pip install 'wireguard-sansio[httpx]'``), and
  :mod:`wireguard.integrations.httpx`: an httpx transport built on it;
* :mod:`wireguard.integrations.aiohttp`: an aiohttp connector
  (``pip install 'wireguard-sansio[aiohttp]'``).

Each opens its connections with the tunnel's ``open_connection`` /
``create_connection`` and passes the host as the URL gives it; TLS runs in
the process (``ssl`` over the tunnel's stream), so ``https://`` works too.
"""
