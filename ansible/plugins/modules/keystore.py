#!/usr/bin/python
# Copyright: (c) 2026, VpnCloud mesh team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller-side keystore steps of a key rotation (run with delegate_to: localhost)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: keystore
short_description: Prepare or finish a node key rotation in the VpnCloud mesh keystore
description:
  - "Runs on the controller (C(delegate_to: localhost), interpreter: the project's virtualenv) because the
    keystore never leaves it. Never returns key material, only public keys."
options:
  path:
    description: Keystore directory (<path>/<mesh>/<node>.key).
    type: path
    required: true
  mesh:
    description: Mesh name.
    type: str
    required: true
  node:
    description: Node whose key rotates.
    type: str
    required: true
  state:
    description:
      - "C(present): make sure the node's current key exists (generated once, never replaced), as
        C(vpncloud apply) does before it renders configs."
      - "C(next): make sure the next key exists (generated once, never replaced)."
      - "C(promoted): the next key becomes the current one (the old one is kept as .retired)."
    type: str
    choices: [present, next, promoted]
    default: next
author: VpnCloud mesh team (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Generate the next key of relay1
  vpncloud.mesh.keystore:
    path: /srv/keystore
    mesh: fleet
    node: relay1
    state: next
  delegate_to: localhost
"""

RETURN = r"""
public_key:
  description:
    - Public key (base62) of the node's current key (present), next key (next) or new current key
      (promoted).
  type: str
  returned: success
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402 (after the documentation, as Ansible expects)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "mesh": {"type": "str", "required": True},
            "node": {"type": "str", "required": True},
            "state": {"type": "str", "choices": ["present", "next", "promoted"], "default": "next"},
        },
        supports_check_mode=True,
    )
    try:
        from vpncloud.mesh.keystore import Keystore, KeystoreError
    except ImportError as exc:
        module.fail_json(msg=f"the vpncloud package is not importable here ({exc}); run on the controller")
    store = Keystore(module.params["path"])
    mesh, node = module.params["mesh"], module.params["node"]
    try:
        if module.params["state"] == "present":
            current = store.get(mesh, node)
            if current is not None:
                module.exit_json(changed=False, public_key=current.public_key)
            if module.check_mode:
                module.exit_json(changed=True, public_key=None)
            module.exit_json(changed=True, public_key=store.ensure(mesh, node).public_key)
        nxt = store.get(mesh, node, next_key=True)
        if module.params["state"] == "next":
            if nxt is not None:
                module.exit_json(changed=False, public_key=nxt.public_key)
            if module.check_mode:
                module.exit_json(changed=True, public_key=None)
            module.exit_json(changed=True, public_key=store.ensure(mesh, node, next_key=True).public_key)
        if nxt is None:
            current = store.get(mesh, node)
            if current is None:
                module.fail_json(msg=f"node {node}: no key in the keystore")
            module.exit_json(changed=False, public_key=current.public_key)
        if not module.check_mode:
            store.promote(mesh, node)
        module.exit_json(changed=True, public_key=nxt.public_key)
    except KeystoreError as exc:
        module.fail_json(msg=str(exc))


if __name__ == "__main__":
    main()
