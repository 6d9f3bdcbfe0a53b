"""Built-in components of asvae-kit, registered through the same hooks as outside plugins.

Each module here is one plugin (see ``asvae_kit.plugin_manager.BUILTIN_MODULES``).  Importing this
package imports none of them; the registry does on first use.
"""
